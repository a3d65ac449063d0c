//! Untrusted input: manifests, records and objects crafted by whoever can write the container
//! or hand the driver a record. Each is refused with a typed error naming what is wrong; none
//! makes volback read, write or delete outside its rules.

mod common;

use bytes::Bytes;
use common::backend::Env;
use common::*;
use volback::backup::source::VolumeSource;
use volback::container::Container;
use volback::crypto::ChunkKeys;
use volback::driver::{Driver, DriverConfig};
use volback::format::chunk::{ChunkKind, encode_chunk};
use volback::format::index_segment::encode_segment;
use volback::format::keys::{pack_key, segment_key};
use volback::format::manifest::MetaRef;
use volback::format::pack::PackBuilder;
use volback::format::record::BackupRecord;
use volback::ids::Hash;
use volback::restore::{TargetMode, run_restore};
use volback::verify::{VerifyOptions, run_verify};

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Stores `stream` as a backup's extent list (one metadata chunk in a pack of its own, with its
/// index segment) and commits a copy of `template`'s manifest, as `id`, that points at it.
fn commit_crafted(c: &Container, template: &str, id: &str, stream: Vec<u8>, count: u64) {
    let raw = Bytes::from(stream);
    let chunk_id = Hash::of(&raw);
    let mut b = PackBuilder::new();
    b.add(&encode_chunk(
        chunk_id,
        ChunkKind::Meta,
        &raw,
        1,
        ChunkKeys::PLAIN,
    ));
    let (pack, pack_id, entries) = b.finish();
    c.store().put(&pack_key(&pack_id), pack).unwrap();
    let seg = encode_segment(&[(pack_id, entries)]);
    c.store().put(&segment_key(&seg), Bytes::from(seg)).unwrap();
    let (mut m, _) = c.read_manifest(template).unwrap();
    m.backup_id = id.into();
    m.extents = vec![MetaRef {
        id: chunk_id.to_hex(),
        len: raw.len() as u32,
        at: None,
    }];
    m.extents_len = raw.len() as u64;
    m.extent_count = count;
    c.commit_manifest(&m).unwrap();
}

/// Zero extents whose lengths wrap the volume offset back to exactly the volume's size: the
/// walk must refuse the first extent that runs past the size, never sum them modulo 2^64
/// (a restore would then punch or write zeros at offsets cast to negative `off_t`, or report
/// a volume of zeros as restored).
#[test]
fn extents_that_wrap_past_the_volume_size_are_refused() {
    let e = Env::fs();
    let vol = e.root.join("v.img");
    make_image(&vol, 1 << 20, 1);
    backup_file(&e.c, &vol, "real", None);
    let size = std::fs::metadata(&vol).unwrap().len();
    let mut stream = Vec::new();
    for len in [(1u64 << 63) - 1, (1u64 << 63) - 1, size + 2] {
        stream.push(2);
        varint(len, &mut stream);
    }
    commit_crafted(&e.c, "real", "crafted", stream, 3);
    for mode in [TargetMode::New, TargetMode::Existing] {
        let out = e.root.join(format!("out-{mode:?}.img"));
        let err = run_restore(&e.c, "crafted", &out, mode, None).unwrap_err();
        assert_eq!(err.kind(), "corrupt", "{err}");
        assert!(err.to_string().contains("backups/crafted"), "{err}");
        assert!(err.to_string().contains("past the volume"), "{err}");
        // Nothing under the target's name for a new target; an existing one is not grown.
        match mode {
            TargetMode::New => assert!(!out.exists()),
            _ => assert!(std::fs::metadata(&out).map_or(0, |m| m.len()) <= size),
        }
    }
    // verify reports the backup as damaged, and the real backup as fine.
    let r = run_verify(&e.c, &VerifyOptions::default()).unwrap();
    assert_eq!(r.damaged_backups, ["crafted"], "{r:?}");
}

/// A record (exported, or a service's backup row) names its container; the driver opens only
/// the container it is configured for, or one the caller allows: a crafted record cannot make
/// it read, write or delete anywhere else.
#[test]
fn a_record_never_chooses_the_container() {
    let e = Env::fs();
    let vol = e.root.join("v.img");
    make_image(&vol, 1 << 20, 2);
    backup_file(&e.c, &vol, "b1", None);
    // Another container the record's author controls (or a victim's, to delete from).
    let other_dir = e.root.join("elsewhere");
    let other = Container::open(other_dir.to_str().unwrap(), true, None).unwrap();
    backup_file(&other, &vol, "b1", None);
    let text = Driver::with_container(other.clone())
        .export_record(&BackupRecord {
            id: "b1".into(),
            ..Default::default()
        })
        .unwrap();
    let driver = |allowed: Vec<String>| {
        Driver::new(DriverConfig {
            container: e.url.clone(),
            allowed_containers: allowed,
            ..Default::default()
        })
    };
    let d = driver(vec![]);
    let foreign = |r: volback::Result<()>| {
        let err = r.unwrap_err();
        assert_eq!(err.kind(), "record_foreign_container", "{err}");
        assert!(err.to_string().contains("elsewhere"), "{err}");
    };
    foreign(d.import_record(&text, None).map(|_| ()));
    let record = BackupRecord {
        id: "b1".into(),
        container: Some(format!("file://{}", other_dir.display())),
        ..Default::default()
    };
    foreign(d.delete_backup(&record));
    foreign(d.restore(&record, &e.root.join("r.img"), true).map(|_| ()));
    foreign(d.get_metadata(&record).map(|_| ()));
    foreign(d.export_record(&record).map(|_| ()));
    foreign(
        d.backup(&record, VolumeSource::Path(vol.clone()), None)
            .map(|_| ()),
    );
    // Nothing happened there.
    assert!(other.read_manifest("b1").is_ok());
    assert!(!e.root.join("r.img").exists());
    // The configured container, however spelled, is the driver's own.
    let own = BackupRecord {
        container: Some(format!("file://{}/", e.objects.display())),
        ..record.clone()
    };
    d.get_metadata(&own).unwrap();
    // A caller that imports into a container it names, or allows the other one, may.
    d.import_record(&text, Some(other_dir.to_str().unwrap()))
        .unwrap();
    driver(vec![other_dir.display().to_string()])
        .import_record(&text, None)
        .unwrap();
}
