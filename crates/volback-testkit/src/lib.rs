//! Test support for volback, used only as a dev-dependency: a fault-injecting store
//! ([`faults`]), deterministic data ([`testdata`]), and an S3-compatible test server started on
//! 127.0.0.1 ([`s3server`]), and a Ceph RADOS Gateway that enforces Object Lock ([`ceph`]).

pub mod ceph;
pub mod faults;
pub mod s3server;
pub mod testdata;
