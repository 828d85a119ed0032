//! Dot-product kernels, dispatched at run time: the crate is built for baseline x86-64, and
//! AVX2 (with FMA for f32) is used where the CPU has it. Each kernel is written once as
//! portable code the compiler vectorises, and compiled a second time with the wider
//! instruction set enabled.

/// Dot product of two f32 vectors: AVX2 + FMA where the CPU has them (the crate is built for
/// baseline x86-64), else portable.
#[allow(unsafe_code)]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: `dot_avx2` only needs AVX2 and FMA, which the CPU was just checked to have.
        return unsafe { dot_avx2(a, b) };
    }
    dot_portable(a, b)
}

/// [`dot_portable`] compiled with AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    dot_portable(a, b)
}

/// Dot product with 16 independent lanes (which the compiler vectorises).
#[inline(always)]
fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (ca, ra) = a.as_chunks::<16>();
    let (cb, rb) = b.as_chunks::<16>();
    for (x, y) in ca.iter().zip(cb) {
        for i in 0..16 {
            acc[i] += x[i] * y[i];
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

/// Dot product of two int8 codes: with AVX2 where the CPU has it (the crate is built for
/// baseline x86-64, whose SSE2 lacks the sign-extending loads), else portable.
#[allow(unsafe_code)]
pub(crate) fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: `dot_i8_avx2` only needs AVX2, which the CPU was just checked to have.
        return unsafe { dot_i8_avx2(a, b) };
    }
    dot_i8_portable(a, b)
}

/// [`dot_i8_portable`] compiled with AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn dot_i8_avx2(a: &[i8], b: &[i8]) -> i32 {
    dot_i8_portable(a, b)
}

/// Dot product of two int8 codes (16 lanes, which the compiler vectorises).
#[inline(always)]
fn dot_i8_portable(a: &[i8], b: &[i8]) -> i32 {
    let mut acc = [0i32; 16];
    let (ca, ra) = a.as_chunks::<16>();
    let (cb, rb) = b.as_chunks::<16>();
    for (x, y) in ca.iter().zip(cb) {
        for i in 0..16 {
            acc[i] += i32::from(x[i]) * i32::from(y[i]);
        }
    }
    let tail: i32 = ra
        .iter()
        .zip(rb)
        .map(|(x, y)| i32::from(*x) * i32::from(*y))
        .sum();
    acc.iter().sum::<i32>() + tail
}

/// Distance key of a cosine similarity: `2 − sim` is ≥ 0 for unit vectors (rounding aside,
/// which `max` absorbs), so its bits order like its value and compare as `u32`.
#[inline]
pub(crate) fn dist_key(sim: f32) -> u32 {
    (2.0 - sim).max(0.0).to_bits()
}

/// Asks the CPU to start loading the cache lines that hold `s`, at most `lines` of them (a
/// hint: it never faults and changes no value). A graph walk knows which vectors it will
/// score next; asking for all of them first lets their cache misses overlap.
#[inline(always)]
pub(crate) fn prefetch<T>(s: &[T], lines: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let p = s.as_ptr().cast::<i8>();
        let end = p.wrapping_add(std::mem::size_of_val(s));
        // From the start of the first line `s` touches: a slice that does not start on a
        // line boundary spans one line more than its length suggests.
        let mut line = p.wrapping_sub(p as usize % 64);
        for _ in 0..lines {
            if line >= end {
                break;
            }
            // SAFETY: a prefetch reads nothing architecturally and cannot fault, whatever
            // the address (here: the lines from the one `s` starts in to the one it ends in;
            // `wrapping_*` arithmetic, never dereferenced).
            #[allow(unsafe_code)]
            unsafe {
                _mm_prefetch(line, _MM_HINT_T0)
            };
            line = line.wrapping_add(64);
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (s, lines);
}
