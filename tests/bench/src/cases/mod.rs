//! The registry of bench cases. To add one (`watcher`, `registrar`, `attestor`...), write a module
//! with a `pub const CASE: Case` and list it in [`CASES`].

mod attestor;
mod events;
mod gate;
mod registrar;
mod system;
mod tekton;
mod watcher;

use std::future::Future;
use std::pin::Pin;

use crate::Options;
use crate::report::CaseReport;

/// A case's future.
pub(crate) type CaseFuture = Pin<Box<dyn Future<Output = anyhow::Result<CaseReport>>>>;

/// A named benchmark.
#[derive(Debug)]
pub(crate) struct Case {
    /// The name used on the command line and in the headline.
    pub name: &'static str,
    /// What it measures.
    pub summary: &'static str,
    /// Runs it.
    pub run: fn(Options) -> CaseFuture,
}

/// Every case, in the order `cargo xtask bench` runs them.
pub(crate) const CASES: &[Case] = &[
    events::CASE,
    watcher::CASE,
    registrar::CASE,
    attestor::CASE,
    system::CASE,
    tekton::CASE,
    gate::CASE,
];

/// The case called `name`.
pub(crate) fn find(name: &str) -> Option<&'static Case> {
    CASES.iter().find(|case| case.name == name)
}
