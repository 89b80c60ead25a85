//! Policies and model weights that change without a restart. [`GuardStore`] holds every
//! named policy bound to the current model, each as a [`crate::Guard`] whose snapshot is
//! swapped atomically: readers never block and requests in flight finish on the snapshot
//! they started with. New files are loaded and validated off the request path (the model
//! with a warm-up inference); anything invalid is rejected with its cause and the previous
//! version keeps serving. Reloads come from a file watcher ([`watch`]), SIGHUP, and the
//! admin API ([`admin`]).

pub mod admin;
mod store;
pub mod watch;

pub use store::{
    GuardStore, ItemReport, LastReload, ModelStatus, PolicyStatus, ReloadReport, StoreConfig, StoreError, StoreStatus,
};
