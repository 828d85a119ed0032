pub use magray_wal as wal;
