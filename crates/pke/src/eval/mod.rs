//! Provides evaluation building blocks (issue #5, in progress): judges and their validation on
//! human-labelled data.

pub mod judge;
