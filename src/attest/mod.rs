//! Attribution: process → cgroup → pod UID / container ID → kubelet `/pods` → SPIRE-style
//! selectors, and the [`attestor::Attestor`] that answers it without blocking the loop.

pub mod attestor;
pub mod cgroup;
pub mod cgroup_cache;
pub mod kubelet;
pub mod pods;
pub mod selectors;
