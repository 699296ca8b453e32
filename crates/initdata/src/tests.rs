use super::*;

fn testdata(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/testdata/{name}", env!("CARGO_MANIFEST_DIR"))).expect("test document")
}

/// Expected values: `sha256sum` / `sha384sum` / `sha512sum` of the same files (coreutils),
/// recorded in `testdata/DIGESTS.coreutils`, then cut or padded by the binding rules.
const SHA256_DOC: &str = "bdea8f2d48ddbcae3174131d7f361cd929f96c590af5eb1baa851ddf1283e479";
const SHA384_DOC: &str =
    "ccc8e57bd2e9f1488cabd04f8d59d256e122a68838e3242360aac05bebdd279153ebe452957b0168740eae10ad9e54b4";
const SHA512_DOC: &str = "31424776e3d35b843768a3368dc5b495154f560c9504044edd9aa71b34070450\
                          b02293e15a16aaae92195471e38e9d8aa28555ac10f39f58510f18e77407a132";

#[test]
fn golden_host_data_and_mrconfigid_for_each_algorithm() {
    let zeros = |n: usize| "00".repeat(n);
    // sha256: host-data as is, mrconfigid zero-padded to 48 bytes.
    let d = InitData::from_toml(testdata("sha256.toml")).expect("parses");
    assert_eq!(d.algorithm, Algorithm::Sha256);
    assert_eq!(hex(&d.host_data()), SHA256_DOC);
    assert_eq!(hex(&d.mrconfigid()), format!("{SHA256_DOC}{}", zeros(16)));
    // sha384: host-data truncated to 32 bytes, mrconfigid as is.
    let d = InitData::from_toml(testdata("sha384.toml")).expect("parses");
    assert_eq!(hex(&d.host_data()), SHA384_DOC[..64]);
    assert_eq!(hex(&d.mrconfigid()), SHA384_DOC);
    // sha512: both truncated.
    let d = InitData::from_toml(testdata("sha512.toml")).expect("parses");
    assert_eq!(hex(&d.host_data()), SHA512_DOC[..64]);
    assert_eq!(hex(&d.mrconfigid()), SHA512_DOC[..96]);
    assert_eq!(d.digest().len(), 64);
}

#[test]
fn hyphenated_algorithm_names_are_accepted() {
    let d = InitData::from_toml(testdata("sha-384-spelling.toml")).expect("parses");
    assert_eq!(d.algorithm, Algorithm::Sha384);
    assert_eq!(
        hex(&d.mrconfigid()),
        "b20e5d75df9c0384e6e320863abbbbb0b858245013f75000cbd3cf90a9460a694e762ec9edb8fdae972ff311d6a8655b"
    );
    assert_eq!(d.policy(), Some("package agent_policy"));
}

#[test]
fn one_changed_byte_changes_both_bindings() {
    for name in ["sha256.toml", "sha384.toml", "sha512.toml"] {
        let original = testdata(name);
        let d = InitData::from_toml(original.clone()).expect("parses");
        // A byte inside the policy text: the document still parses, but is another document.
        let pos = original.windows(7).position(|w| w == b"package").expect("policy text");
        let mut changed = original;
        changed[pos] = b'P';
        let e = InitData::from_toml(changed).expect("still parses");
        assert_ne!(d.host_data(), e.host_data(), "{name}");
        assert_ne!(d.mrconfigid(), e.mrconfigid(), "{name}");
    }
}

#[test]
fn annotation_round_trip_keeps_the_pods_bytes() {
    let toml = testdata("sha384.toml");
    let gz = gzip_bytes(&toml);
    let value = base64::engine::general_purpose::STANDARD.encode(&gz);
    let d = InitData::from_annotation(&value).expect("decodes");
    assert_eq!(d.toml(), &toml[..]);
    assert_eq!(d.data.get("note.txt").map(String::as_str), Some("pinned values go here"));
    assert!(d.policy().expect("policy").contains("AllowRequestsFailingPolicy"));
    let disk = d.to_disk();
    assert_eq!(&disk[..8], b"initdata");
    assert_eq!(u64::from_le_bytes(disk[8..16].try_into().expect("8")), gz.len() as u64);
    assert_eq!(&disk[16..16 + gz.len()], &gz[..], "the disk carries the annotation's gzip bytes");
    assert_eq!(disk.len() % 512, 0);
    assert!(disk[16 + gz.len()..].iter().all(|&b| b == 0), "zero padding");
    let back = InitData::from_disk(&disk).expect("reads back");
    assert_eq!(back.host_data(), d.host_data());
}

#[test]
fn bad_input_is_named() {
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    assert!(matches!(InitData::from_annotation("not base64!"), Err(Error::Base64(_))));
    assert!(matches!(InitData::from_annotation(&b64(b"plain text")), Err(Error::Gzip(_))));
    let doc = |s: &str| InitData::from_toml(s.as_bytes().to_vec());
    assert!(matches!(doc("version = \"0.1.0\"\nalgorithm = \"md5\"\n"), Err(Error::Algorithm(a)) if a == "md5"));
    assert!(matches!(doc("version = \"0.2.0\"\nalgorithm = \"sha256\"\n"), Err(Error::Version(_))));
    assert!(matches!(doc("version = \"0.1.0\"\n"), Err(Error::Toml(_))));
    assert!(matches!(doc("this is = not toml = at all"), Err(Error::Toml(_))));
    assert!(matches!(
        doc("version = \"0.1.0\"\nalgorithm = \"sha256\"\n[data]\n\"../etc/passwd\" = \"x\"\n"),
        Err(Error::FileName(_))
    ));
    assert!(matches!(InitData::from_toml(vec![0xff, 0xfe]), Err(Error::NotUtf8)));
}

#[test]
fn bad_disks_are_refused() {
    let d = InitData::wrap_policy("package agent_policy");
    let mut disk = d.to_disk();
    assert!(matches!(InitData::from_disk(&disk[..10]), Err(Error::Disk(_))));
    disk[0] = b'X';
    assert!(matches!(InitData::from_disk(&disk), Err(Error::Disk(m)) if m.contains("magic")));
    let mut disk = d.to_disk();
    disk[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(InitData::from_disk(&disk), Err(Error::Disk(m)) if m.contains("past the disk")));
    let mut disk = d.to_disk();
    let gzip_end = 16 + u64::from_le_bytes(disk[8..16].try_into().expect("8")) as usize;
    disk[gzip_end - 5] ^= 0xff; // in the gzip trailer's CRC-32
    assert!(matches!(InitData::from_disk(&disk), Err(Error::Gzip(_))), "corrupt gzip");
}

#[test]
fn gzip_bomb_stops_at_the_limit() {
    let big = vec![b' '; MAX_DOCUMENT + 10];
    let value = base64::engine::general_purpose::STANDARD.encode(gzip_bytes(&big));
    assert_eq!(InitData::from_annotation(&value).err(), Some(Error::TooLarge));
}

#[test]
fn wrapped_policy_survives_any_text_and_is_deterministic() {
    let rego = "package agent_policy\n# \"quotes\" \\ backslash\t tab \u{7} bell é\ndefault X := true\n";
    let a = InitData::wrap_policy(rego);
    assert_eq!(a.policy(), Some(rego));
    assert_eq!(a.algorithm, Algorithm::Sha256);
    let b = InitData::wrap_policy(rego);
    assert_eq!(a.to_disk(), b.to_disk(), "same policy, same bytes");
    assert_eq!(a.host_data().to_vec(), Sha256::digest(a.toml()).to_vec());
}
