//! Memory-mapped safetensors reading, the streaming writer, file identity, and clear errors
//! for corrupted or truncated files.

mod formats_util;

use std::io::Write;
use std::path::Path;

use comfyrs_nodes::models::writer::{encode_f32, write_all};
use comfyrs_nodes::models::{file_stats, FileDtype, FileIdentity, FormatError, MappedFile, SafetensorsWriter, TensorHeader};
use tch::Kind;

fn write_simple(path: &Path, dtype: FileDtype) -> Vec<f32> {
    let vals: Vec<f32> = (0..12).map(|i| i as f32 * 0.25 - 1.0).collect();
    write_all(
        path,
        &[
            ("b.weight".into(), dtype, vec![3, 4], encode_f32(&vals, dtype).unwrap()),
            ("a.alpha".into(), dtype, vec![], encode_f32(&[8.0], dtype).unwrap()),
        ],
        None,
    )
    .unwrap();
    vals
}

#[test]
fn roundtrip_each_float_dtype_zero_copy() {
    let dir = tempfile::tempdir().unwrap();
    for (dt, kind) in [(FileDtype::F16, Kind::Half), (FileDtype::BF16, Kind::BFloat16), (FileDtype::F32, Kind::Float)] {
        let p = dir.path().join(format!("m_{}.safetensors", dt.name()));
        let vals = write_simple(&p, dt);
        let f = MappedFile::open(&p).unwrap();
        assert_eq!(f.keys().collect::<Vec<_>>(), vec!["b.weight", "a.alpha"]);
        let t = f.tensor("b.weight").unwrap();
        assert_eq!(t.size(), vec![3, 4]);
        assert_eq!(t.kind(), kind);
        assert!(t.is_mapped(), "{dt}: tensor must alias the map (no copy)");
        assert!(f.contains_ptr(&t));
        let got = formats_util::tensor_f64(&t);
        for (g, v) in got.iter().zip(&vals) {
            assert_eq!(*g, *v as f64, "{dt}: values are exactly representable");
        }
        let a = f.tensor("a.alpha").unwrap();
        assert_eq!(a.size(), Vec::<i64>::new());
        assert_eq!(a.double_value(&[]), 8.0);
        assert_eq!(f.to_f64_vec("b.weight").unwrap()[5], vals[5] as f64);
    }
}

#[test]
fn mapped_tensor_keeps_the_map_alive() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.safetensors");
    let vals = write_simple(&p, FileDtype::F32);
    let t = {
        let f = MappedFile::open(&p).unwrap();
        let t = f.tensor("b.weight").unwrap();
        t.map_view(|x| x.narrow(0, 1, 2))
    }; // the Arc<MappedFile> of `open` is dropped here
    assert!(t.is_mapped());
    assert_eq!(formats_util::tensor_f64(&t)[0], vals[4] as f64);
}

#[test]
fn a_write_through_a_shallow_handle_stays_private_to_the_process() {
    // `&Tensor` offers `shallow_clone`, an owned handle over the same memory that in-place
    // operations accept: writing through it must neither fault on the map nor reach the file.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.safetensors");
    let vals = write_simple(&p, FileDtype::F32);
    let on_disk = std::fs::read(&p).unwrap();
    let f = MappedFile::open(&p).unwrap();
    let t = f.tensor("b.weight").unwrap();
    assert!(t.is_mapped());
    let mut alias = t.shallow_clone();
    let _ = alias.fill_(7.0);
    assert_eq!(formats_util::tensor_f64(&t)[0], 7.0, "the alias and the mapped tensor share memory");
    assert_eq!(std::fs::read(&p).unwrap(), on_disk, "the file is untouched");
    // Another map of the same file sees the file's values.
    let again = MappedFile::open(&p).unwrap().tensor("b.weight").unwrap();
    assert_eq!(formats_util::tensor_f64(&again)[0], vals[0] as f64);
}

#[test]
fn metadata_and_header_alignment() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.safetensors");
    let mut md = std::collections::BTreeMap::new();
    md.insert("k".to_string(), "v".to_string());
    write_all(&p, &[("x".into(), FileDtype::F32, vec![2], encode_f32(&[1.0, 2.0], FileDtype::F32).unwrap())], Some(&md))
        .unwrap();
    let bytes = std::fs::read(&p).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    assert_eq!((8 + n) % 8, 0, "data section starts 8-aligned");
    let f = MappedFile::open(&p).unwrap();
    assert_eq!(f.metadata().unwrap()["k"], "v");
}

#[test]
fn unsupported_dtype_is_listed_but_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("ints.safetensors");
    let ids: Vec<u8> = (0..4i64).flat_map(|i| i.to_le_bytes()).collect();
    write_all(
        &p,
        &[
            ("position_ids".into(), FileDtype::Other(safetensors::Dtype::I64), vec![1, 4], ids),
            ("w".into(), FileDtype::F32, vec![1], encode_f32(&[1.0], FileDtype::F32).unwrap()),
        ],
        None,
    )
    .unwrap();
    let f = MappedFile::open(&p).unwrap();
    assert_eq!(f.meta("position_ids").unwrap().dtype, FileDtype::Other(safetensors::Dtype::I64));
    let err = f.tensor("position_ids").unwrap_err();
    assert!(matches!(err, FormatError::UnsupportedDtype { .. }));
    let msg = err.to_string();
    assert!(msg.contains("ints.safetensors") && msg.contains("position_ids") && msg.contains("I64"), "{msg}");
    assert!(f.tensor("w").is_ok());
    let missing = f.tensor("nope").unwrap_err().to_string();
    assert!(missing.contains("nope") && missing.contains("ints.safetensors"), "{missing}");
}

#[test]
fn truncated_files_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("full.safetensors");
    write_simple(&p, FileDtype::F16);
    let bytes = std::fs::read(&p).unwrap();

    let cut = dir.path().join("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() - 3]).unwrap();
    let err = MappedFile::open(&cut).unwrap_err();
    assert!(matches!(err, FormatError::Truncated { .. }), "{err}");
    assert!(err.to_string().contains("cut.safetensors"), "{err}");

    let head = dir.path().join("head.safetensors");
    std::fs::write(&head, &bytes[..20]).unwrap();
    let err = MappedFile::open(&head).unwrap_err();
    assert!(matches!(err, FormatError::Truncated { .. }), "{err}");
    assert!(err.to_string().contains("head.safetensors"));

    let tiny = dir.path().join("tiny.safetensors");
    std::fs::write(&tiny, &bytes[..5]).unwrap();
    assert!(matches!(MappedFile::open(&tiny).unwrap_err(), FormatError::Truncated { .. }));

    let empty = dir.path().join("empty.safetensors");
    std::fs::write(&empty, b"").unwrap();
    let err = MappedFile::open(&empty).unwrap_err();
    assert!(matches!(err, FormatError::Truncated { .. }) && err.to_string().contains("empty.safetensors"));

    // Extra trailing bytes do not match the header either.
    let long = dir.path().join("long.safetensors");
    let mut b = bytes.clone();
    b.extend_from_slice(&[0, 0]);
    std::fs::write(&long, &b).unwrap();
    assert!(MappedFile::open(&long).is_err());

    let missing = MappedFile::open(dir.path().join("absent.safetensors")).unwrap_err();
    assert!(matches!(missing, FormatError::Io { .. }) && missing.to_string().contains("absent.safetensors"));
}

fn raw_file(path: &Path, header: &str, data: &[u8]) {
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(&(header.len() as u64).to_le_bytes()).unwrap();
    f.write_all(header.as_bytes()).unwrap();
    f.write_all(data).unwrap();
}

#[test]
fn corrupted_headers_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("json.safetensors", "{not json", vec![]),
        ("offsets.safetensors", r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#, vec![0u8; 12]),
        ("shape.safetensors", r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#, vec![0u8; 8]),
        ("dtype.safetensors", r#"{"a":{"dtype":"F33","shape":[2],"data_offsets":[0,8]}}"#, vec![0u8; 8]),
    ];
    for (name, header, data) in cases {
        let p = dir.path().join(name);
        raw_file(&p, header, &data);
        let err = MappedFile::open(&p).unwrap_err();
        assert!(matches!(err, FormatError::Corrupt { .. }), "{name}: {err}");
        assert!(err.to_string().contains(name), "{err}");
    }
    // A header length that points past the end of the file.
    let p = dir.path().join("len.safetensors");
    let mut f = std::fs::File::create(&p).unwrap();
    f.write_all(&1000u64.to_le_bytes()).unwrap();
    f.write_all(b"{}").unwrap();
    drop(f);
    let err = MappedFile::open(&p).unwrap_err();
    assert!(matches!(err, FormatError::Truncated { .. }) && err.to_string().contains("len.safetensors"), "{err}");
}

#[test]
fn unaligned_tensor_is_copied_correctly() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("mixed.safetensors");
    // A 1-element F16 tensor puts the following F32 tensor at a 2-byte offset.
    let mut data = half::f16::from_f32(0.5).to_le_bytes().to_vec();
    for v in [1.5f32, -2.0, 3.25] {
        data.extend_from_slice(&v.to_le_bytes());
    }
    let header = r#"{"h":{"dtype":"F16","shape":[1],"data_offsets":[0,2]},"f":{"dtype":"F32","shape":[3],"data_offsets":[2,14]}}"#;
    let pad = (8 - (8 + header.len()) % 8) % 8;
    raw_file(&p, &format!("{header}{}", " ".repeat(pad)), &data);
    let f = MappedFile::open(&p).unwrap();
    let t = f.tensor("f").unwrap();
    assert!(!t.is_mapped(), "unaligned data must be copied");
    assert_eq!(formats_util::tensor_f64(&t), vec![1.5, -2.0, 3.25]);
    assert_eq!(f.tensor("h").unwrap().double_value(&[0]), 0.5);
}

#[test]
fn writer_streams_checks_sizes_and_is_atomic() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("sub/out.safetensors");
    let headers = vec![
        TensorHeader::new("a", FileDtype::F32, &[2, 2]),
        TensorHeader::new("empty", FileDtype::F32, &[0]),
        TensorHeader::new("b", FileDtype::BF16, &[3]),
    ];
    let mut w = SafetensorsWriter::create(&p, &headers, None).unwrap();
    assert_eq!(w.current_tensor(), Some("a"));
    // Chunks may span tensors.
    let mut bytes = encode_f32(&[1.0, 2.0, 3.0, 4.0], FileDtype::F32).unwrap();
    bytes.extend(encode_f32(&[5.0, 6.0, 7.0], FileDtype::BF16).unwrap());
    w.write(&bytes[..5]).unwrap();
    assert!(!p.exists(), "nothing at the destination before finish");
    w.write(&bytes[5..]).unwrap();
    assert_eq!(w.current_tensor(), None);
    assert!(w.write(&[0]).is_err(), "more bytes than declared");
    w.finish().unwrap();
    let f = MappedFile::open(&p).unwrap();
    assert_eq!(formats_util::tensor_f64(&f.tensor("b").unwrap()), vec![5.0, 6.0, 7.0]);
    assert_eq!(f.tensor("empty").unwrap().size(), vec![0]);

    // An incomplete writer fails at finish, and a dropped one leaves no temp file behind.
    let q = dir.path().join("incomplete.safetensors");
    let mut w = SafetensorsWriter::create(&q, &headers, None).unwrap();
    w.write(&bytes[..4]).unwrap();
    let err = w.finish().unwrap_err().to_string();
    assert!(err.contains("incomplete") && err.contains("'a'"), "{err}");
    let w = SafetensorsWriter::create(&q, &headers, None).unwrap();
    drop(w);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(leftovers.len(), 1, "only sub/ remains: {leftovers:?}");
    assert!(!q.exists());
}

#[test]
fn file_identity_tracks_size_and_mtime() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("lora.safetensors");
    write_simple(&p, FileDtype::F16);
    let id = FileIdentity::of(&p).unwrap();
    assert_eq!(id.size, std::fs::metadata(&p).unwrap().len());
    assert!(id.is_current());
    assert!(id.path.is_absolute());
    let (mtime, size) = file_stats(&p);
    assert_eq!(size, id.size);
    assert!((mtime - id.mtime_secs()).abs() < 1e-6);
    assert_eq!(file_stats(dir.path().join("absent")), (0.0, 0));
    // "Retrain" the LoRA: new content, new mtime.
    let f = std::fs::File::options().write(true).open(&p).unwrap();
    f.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(5)).unwrap();
    drop(f);
    let id2 = FileIdentity::of(&p).unwrap();
    assert_ne!(id, id2);
    assert_ne!(id.fingerprint(), id2.fingerprint());
    assert!(!id.is_current());
    // The identity of an open file is the one it was opened with.
    let m = MappedFile::open(&p).unwrap();
    assert_eq!(m.identity(), &id2);
}
