//! What containerd writes to `start`'s stdin, read once and understood in both forms:
//!
//! - containerd ≤ 2.2: a bare `google.protobuf.Any` of the runtime options, only when the
//!   runtime has options (often nothing at all);
//! - containerd 2.3+: a `containerd.runtime.bootstrap.v1.BootstrapParams` (containerd's
//!   `api/runtime/bootstrap/v1/bootstrap.proto`), with the runtime options as an extension.
//!
//! The containerd-shim crate (0.10 and 0.11) parses stdin as `Any` → runc `Options` while it
//! spawns the daemon, which fails on `BootstrapParams`; reading stdin here first leaves it
//! nothing to misread. The shim needs nothing from it: the runtime options reach `Create`
//! again in `CreateTaskRequest.options`.

use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::{CodedInputStream, Message};

/// `start`'s stdin, decoded.
#[derive(Debug, Default, PartialEq)]
pub enum StartInput {
    #[default]
    Empty,
    /// containerd ≤ 2.2: the runtime options.
    Options(Any),
    /// containerd 2.3+.
    Bootstrap(BootstrapParams),
}

/// The fields of `BootstrapParams` the shim logs (field numbers from bootstrap.proto).
#[derive(Debug, Default, PartialEq)]
pub struct BootstrapParams {
    /// 1: the task (or sandbox) id.
    pub instance_id: String,
    /// 2
    pub namespace: String,
    /// 4
    pub containerd_version: String,
    /// 8: `Extension { Any value = 1; }`, the runtime options among them.
    pub extensions: Vec<Any>,
}

#[derive(Debug, thiserror::Error)]
#[error("start's stdin is neither a protobuf Any nor a BootstrapParams")]
pub struct Malformed(#[source] containerd_shim_protos::protobuf::Error);

/// Field numbers of `BootstrapParams` (bootstrap.proto).
mod field {
    pub const INSTANCE_ID: u32 = 1;
    pub const NAMESPACE: u32 = 2;
    pub const CONTAINERD_VERSION: u32 = 4;
    pub const EXTENSIONS: u32 = 8;
    /// `Extension.value`.
    pub const EXTENSION_VALUE: u32 = 1;
}
const WIRE_LEN: u32 = 2;

impl StartInput {
    /// Decodes stdin's bytes. An `Any` has only fields 1 and 2; containerd's `BootstrapParams`
    /// always carries more (its version, addresses and binary), which tells them apart.
    pub fn parse(bytes: &[u8]) -> Result<StartInput, Malformed> {
        if bytes.is_empty() {
            return Ok(StartInput::Empty);
        }
        if max_field(bytes).map_err(Malformed)? <= 2 {
            return Any::parse_from_bytes(bytes).map(StartInput::Options).map_err(Malformed);
        }
        let mut p = BootstrapParams::default();
        let mut input = CodedInputStream::from_bytes(bytes);
        while let Some(tag) = input.read_raw_tag_or_eof().map_err(Malformed)? {
            let (number, wire) = (tag >> 3, tag & 7);
            match (number, wire) {
                (field::INSTANCE_ID, WIRE_LEN) => p.instance_id = input.read_string().map_err(Malformed)?,
                (field::NAMESPACE, WIRE_LEN) => p.namespace = input.read_string().map_err(Malformed)?,
                (field::CONTAINERD_VERSION, WIRE_LEN) => {
                    p.containerd_version = input.read_string().map_err(Malformed)?
                }
                (field::EXTENSIONS, WIRE_LEN) => {
                    let ext = input.read_bytes().map_err(Malformed)?;
                    if let Some(any) = extension_value(&ext).map_err(Malformed)? {
                        p.extensions.push(any);
                    }
                }
                _ => skip(&mut input, wire).map_err(Malformed)?,
            }
        }
        Ok(StartInput::Bootstrap(p))
    }

    /// Reads all of stdin (containerd closes it) and decodes it.
    pub fn read_stdin() -> Result<StartInput, std::io::Error> {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut bytes)?;
        StartInput::parse(&bytes).map_err(std::io::Error::other)
    }
}

fn skip(input: &mut CodedInputStream<'_>, wire: u32) -> Result<(), containerd_shim_protos::protobuf::Error> {
    use containerd_shim_protos::protobuf::rt::WireType;
    let wire = WireType::new(wire).ok_or_else(|| {
        containerd_shim_protos::protobuf::Error::from(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("wire type {wire}"),
        ))
    })?;
    input.skip_field(wire)
}

/// The highest field number at the top level of a message.
fn max_field(bytes: &[u8]) -> Result<u32, containerd_shim_protos::protobuf::Error> {
    let mut input = CodedInputStream::from_bytes(bytes);
    let mut max = 0;
    while let Some(tag) = input.read_raw_tag_or_eof()? {
        max = max.max(tag >> 3);
        skip(&mut input, tag & 7)?;
    }
    Ok(max)
}

fn extension_value(bytes: &[u8]) -> Result<Option<Any>, containerd_shim_protos::protobuf::Error> {
    let mut input = CodedInputStream::from_bytes(bytes);
    let mut value = None;
    while let Some(tag) = input.read_raw_tag_or_eof()? {
        if tag >> 3 == field::EXTENSION_VALUE && tag & 7 == WIRE_LEN {
            value = Some(Any::parse_from_bytes(&input.read_bytes()?)?);
        } else {
            skip(&mut input, tag & 7)?;
        }
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use containerd_shim_protos::protobuf::CodedOutputStream;

    use super::*;

    fn options_any() -> Any {
        // runtimeoptions.v1.Options { config_path = 2 }
        let mut value = Vec::new();
        let mut out = CodedOutputStream::vec(&mut value);
        out.write_string(2, "/opt/contrast/h/etc/configuration.toml").expect("encode");
        out.flush().expect("flush");
        drop(out);
        Any { type_url: "runtimeoptions.v1.Options".into(), value, ..Default::default() }
    }

    /// A BootstrapParams as containerd 2.3 encodes it (every field set, bootstrap.proto).
    fn bootstrap_bytes() -> Vec<u8> {
        let mut ext = Vec::new();
        let mut out = CodedOutputStream::vec(&mut ext);
        out.write_bytes(1, &options_any().write_to_bytes().expect("any")).expect("encode");
        out.flush().expect("flush");
        drop(out);
        let mut bytes = Vec::new();
        let mut out = CodedOutputStream::vec(&mut bytes);
        out.write_string(1, "c42cb405a829").expect("instance_id");
        out.write_string(2, "k8s.io").expect("namespace");
        out.write_int32(3, -4).expect("log_level DEBUG");
        out.write_string(4, "v2.3.0").expect("containerd_version");
        out.write_string(5, "/run/containerd/containerd.sock.ttrpc").expect("ttrpc address");
        out.write_string(6, "/run/containerd/containerd.sock").expect("grpc address");
        out.write_string(7, "/usr/bin/containerd").expect("binary");
        out.write_bytes(8, &ext).expect("extension");
        out.write_string(9, "/run/containerd/s").expect("socket_dir");
        out.flush().expect("flush");
        drop(out);
        bytes
    }

    #[test]
    fn bootstrap_params_of_containerd_2_3_are_understood() {
        let StartInput::Bootstrap(p) = StartInput::parse(&bootstrap_bytes()).expect("parses") else {
            panic!("not recognised as BootstrapParams");
        };
        assert_eq!(p.instance_id, "c42cb405a829");
        assert_eq!(p.namespace, "k8s.io");
        assert_eq!(p.containerd_version, "v2.3.0");
        assert_eq!(p.extensions, vec![options_any()]);
    }

    #[test]
    fn the_bare_any_of_older_containerd_is_understood() {
        let bytes = options_any().write_to_bytes().expect("encode");
        assert_eq!(StartInput::parse(&bytes).expect("parses"), StartInput::Options(options_any()));
        assert_eq!(StartInput::parse(&[]).expect("parses"), StartInput::Empty);
    }

    #[test]
    fn what_the_shim_crate_would_misread_is_what_breaks_it() {
        // The crate's reading (Any, then the value as runc Options) fails on BootstrapParams:
        // the value it finds is the namespace's bytes. This is why stdin is read here first.
        let any = Any::parse_from_bytes(&bootstrap_bytes()).expect("decodes as an Any");
        assert_eq!(any.value, b"k8s.io");
        assert!(containerd_shim_protos::shim::oci::Options::parse_from_bytes(&any.value).is_err());
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(StartInput::parse(&[0xff, 0xff, 0xff]).is_err());
    }
}
