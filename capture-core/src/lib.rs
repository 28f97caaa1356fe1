//! capture-core
