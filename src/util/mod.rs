//! Small helpers many modules share: hashes, top-k, thread split, environment, time. A leaf:
//! it imports nothing of the crate but `error`.

mod bits;
mod env;
mod hash;
mod threads;
mod time;
mod topk;

pub(crate) use bits::{Bits, SlotSet};
pub(crate) use env::env_parse;
pub(crate) use hash::{fnv64, FastMap};
pub(crate) use threads::{lower_this_thread_priority, part_bounds, scan_threads};
pub(crate) use time::us;
pub(crate) use topk::TopK;
