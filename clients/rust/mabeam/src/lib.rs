pub mod v1 { include!("gen/mabeam.v1.rs"); }
