//! Test support for volback, used only as a dev-dependency: a fault-injecting store
//! ([`faults`]), deterministic data ([`testdata`]), and an S3-compatible test server started on
//! 127.0.0.1 ([`s3server`]), a Ceph RADOS Gateway that enforces Object Lock ([`ceph`]), and
//! backups in the layout of Cinder's posix driver ([`cinder_layout`]).

pub mod ceph;
pub mod cinder_layout;
pub mod faults;
pub mod s3server;
pub mod testdata;
