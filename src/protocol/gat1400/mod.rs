//! GA/T 1400 (视图库): the JSON codec of system objects, answers, status codes and times
//! (`codec`) and subscriptions (`subscriptions`), shared by the view-library endpoint
//! (`sources/gat1400`) and the upstream client (`sinks/gat1400`).

pub mod codec;
pub mod subscriptions;
