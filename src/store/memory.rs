//! The store that keeps nothing.

use super::{At, Entry, Store};
use crate::error::CenterError;

/// Keeps nothing: the state lives in memory only.
#[derive(Debug, Default)]
pub struct MemoryStore;

impl Store for MemoryStore {
    fn append(&self, _entry: &Entry, _at: At) -> Result<(), CenterError> {
        Ok(())
    }
}
