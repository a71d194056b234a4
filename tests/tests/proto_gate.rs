//! The breaking-change gate (`make proto-check`): `buf breaking` against the committed
//! baseline of released packages passes on the tree as it is and on additive changes, and
//! fails on a deliberately broken copy of a v1 proto: a renumbered or removed field, a changed
//! type, a removed RPC.

use std::path::{Path, PathBuf};

fn proto_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto")
}

fn buf() -> String {
    std::env::var("TERTULIA_BUF_BIN").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../.tools/venv/bin/buf").to_owned()
    })
}

/// A copy of the proto module with `edit` applied to `file`; returns its folder.
fn copy_with(file: &str, edit: impl FnOnce(String) -> String) -> PathBuf {
    let to = std::env::temp_dir().join(tertulia_tests::unique_name("protos"));
    copy_tree(&proto_dir().join("tertulia"), &to.join("tertulia"));
    std::fs::copy(proto_dir().join("buf.yaml"), to.join("buf.yaml")).unwrap();
    let path = to.join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    let edited = edit(text.clone());
    assert_ne!(edited, text, "the edit changed {file}");
    std::fs::write(&path, edited).unwrap();
    to
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Runs the gate on the module at `dir`: success, and what buf printed.
fn gate(dir: &Path) -> (bool, String) {
    let baseline = proto_dir().join("baseline/released.binpb");
    let output = std::process::Command::new(buf())
        .arg("breaking")
        .arg("--against")
        .arg(&baseline)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run buf (make tools installs it): {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

fn assert_refused(file: &str, edit: impl FnOnce(String) -> String, expect: &str) {
    let dir = copy_with(file, edit);
    let (ok, text) = gate(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!ok, "the gate let a breaking change through");
    assert!(text.contains(expect), "{text}");
}

#[test]
fn the_tree_as_it_is_passes_the_gate() {
    let (ok, text) = gate(&proto_dir());
    assert!(ok, "{text}");
}

#[test]
fn additive_changes_pass() {
    let dir = copy_with("tertulia/chat/v1/chat.proto", |t| {
        t.replacen(
            "message Message {",
            "message Message {\n  // A new optional field is compatible.\n  string locale = 99;",
            1,
        )
    });
    let (ok, text) = gate(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(ok, "{text}");
}

#[test]
fn a_renumbered_field_fails() {
    assert_refused(
        "tertulia/chat/v1/chat.proto",
        |t| t.replacen("  uint64 seq = 3;", "  uint64 seq = 33;", 1),
        "Previously present field \"3\" with name \"seq\"",
    );
}

#[test]
fn a_removed_field_fails() {
    assert_refused(
        "tertulia/catalog/v1/catalog.proto",
        |t| t.replacen("  string failure_reason = 13;\n", "", 1),
        "failure_reason",
    );
}

#[test]
fn a_changed_type_fails() {
    assert_refused(
        "tertulia/chat/v1/chat.proto",
        |t| t.replacen("  uint64 seq = 3;", "  string seq = 3;", 1),
        "changed type",
    );
}

#[test]
fn a_removed_rpc_fails() {
    assert_refused(
        "tertulia/catalog/v1/catalog.proto",
        |t| {
            t.replacen(
                "  rpc DeleteVideo(DeleteVideoRequest) returns (DeleteVideoResponse);\n",
                "",
                1,
            )
        },
        "DeleteVideo",
    );
}

/// `proto/lifecycle.toml` dates exactly the RPCs the protos mark `deprecated`: none is
/// deprecated without a date, none is dated without being deprecated, and every name is real.
#[test]
fn every_deprecated_rpc_has_a_dated_lifecycle() {
    use prost::Message as _;
    let text = std::fs::read_to_string(proto_dir().join("lifecycle.toml")).unwrap();
    let lifecycle = tertulia_plumbing::lifecycle::GrpcLifecycle::parse(&text).unwrap();
    let files =
        prost_types::FileDescriptorSet::decode(tertulia_proto::FILE_DESCRIPTOR_SET).unwrap();
    let mut deprecated = Vec::new();
    let mut known = Vec::new();
    for file in &files.file {
        for service in &file.service {
            let name = format!("{}.{}", file.package(), service.name());
            for method in &service.method {
                let full = format!("{name}/{}", method.name());
                if method
                    .options
                    .as_ref()
                    .is_some_and(prost_types::MethodOptions::deprecated)
                {
                    deprecated.push(full.clone());
                }
                known.push(full);
            }
        }
    }
    let mut dated = Vec::new();
    for (service, policy) in lifecycle.services() {
        assert!(
            !policy.methods.is_empty(),
            "{service}: name the deprecated methods"
        );
        assert!(
            known
                .iter()
                .any(|m| m.starts_with(&format!("{}/", policy.successor))),
            "{service}: successor {} is not a service",
            policy.successor
        );
        dated.extend(policy.methods.iter().map(|m| format!("{service}/{m}")));
    }
    deprecated.sort();
    dated.sort();
    assert!(!deprecated.is_empty());
    assert_eq!(dated, deprecated, "lifecycle.toml against the protos");
}
