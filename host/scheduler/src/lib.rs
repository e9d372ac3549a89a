//! skiff scheduler
