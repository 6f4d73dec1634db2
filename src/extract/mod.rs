//! Writing the extract files (DESIGN §6): the XML format and its schema, and the parallel,
//! deterministic gzip that wraps it. Publication and the window clock build on these.

pub mod files;
pub mod gzip;
pub mod publish;
pub mod xml;
