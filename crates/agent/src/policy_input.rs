//! The policy's `input`: a request as kata-agent hands it to regorus, so that Rego written for
//! kata (genpolicy, `contrast generate`) addresses the same paths (`input.OCI.Process.Args`).
//!
//! kata-agent serializes its rust-protobuf messages with serde, which gives, and we give:
//! - keys: the proto field names verbatim; a name that is a Rust keyword gets a trailing `_`
//!   (`type` → `type_`), as rust-protobuf names the struct field;
//! - every field present: scalars with their default value, empty lists `[]`, empty maps
//!   `{}`, an unset message field (or proto3 `optional` scalar) `null`;
//! - enums as their number, 64-bit integers as JSON numbers, bytes as an array of numbers;
//! - a real `oneof` as one key named after it, `null` or `{"<CamelCaseField>": value}`.

use protobuf::reflect::{FieldDescriptor, ReflectValueRef, RuntimeFieldType, RuntimeType};
use protobuf::MessageDyn;
use serde_json::{Map, Value};

/// Names rust-protobuf suffixes with `_` because they are Rust keywords.
const RUST_KEYWORDS: &[&str] = &[
    "abstract", "alignof", "as", "async", "await", "become", "box", "break", "const", "continue", "crate", "do", "dyn",
    "else", "enum", "extern", "false", "final", "fn", "for", "if", "impl", "in", "let", "loop", "macro", "match",
    "mod", "move", "mut", "offsetof", "override", "priv", "proc", "pub", "pure", "ref", "return", "self", "sizeof",
    "static", "struct", "super", "trait", "true", "type", "typeof", "unsafe", "unsized", "use", "virtual", "where",
    "while", "yield",
];

/// The request as kata-agent's policy input.
pub fn to_input(msg: &dyn MessageDyn) -> Value {
    let mut out = Map::new();
    let descriptor = msg.descriptor_dyn();
    for field in descriptor.fields() {
        if let Some(oneof) = field.containing_oneof() {
            // One key per oneof, written when its first member is reached.
            let name = oneof.name().to_owned();
            if out.contains_key(&name) {
                continue;
            }
            let set = oneof.fields().find_map(|f| f.get_singular(msg).map(|v| (f.name().to_owned(), value(v))));
            let v = match set {
                Some((variant, v)) => Value::Object(Map::from_iter([(camel_case(&variant), v)])),
                None => Value::Null,
            };
            out.insert(name, v);
            continue;
        }
        out.insert(key(field.name()), field_value(&field, msg));
    }
    Value::Object(out)
}

fn field_value(field: &FieldDescriptor, msg: &dyn MessageDyn) -> Value {
    match field.runtime_field_type() {
        RuntimeFieldType::Singular(ty) => {
            // Message fields and proto3 `optional` scalars can be unset: null, as serde
            // writes kata's `MessageField` / `Option`.
            if matches!(ty, RuntimeType::Message(_)) || field.proto().proto3_optional() {
                field.get_singular(msg).map_or(Value::Null, value)
            } else {
                value(field.get_singular_field_or_default(msg))
            }
        }
        RuntimeFieldType::Repeated(_) => Value::Array(field.get_repeated(msg).into_iter().map(value).collect()),
        RuntimeFieldType::Map(..) => {
            Value::Object(field.get_map(msg).into_iter().map(|(k, v)| (map_key(k), value(v))).collect())
        }
    }
}

fn value(v: ReflectValueRef<'_>) -> Value {
    match v {
        ReflectValueRef::U32(n) => n.into(),
        ReflectValueRef::U64(n) => n.into(),
        ReflectValueRef::I32(n) => n.into(),
        ReflectValueRef::I64(n) => n.into(),
        ReflectValueRef::F32(n) => serde_json::Number::from_f64(f64::from(n)).map_or(Value::Null, Value::Number),
        ReflectValueRef::F64(n) => serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number),
        ReflectValueRef::Bool(b) => b.into(),
        ReflectValueRef::String(s) => s.into(),
        ReflectValueRef::Bytes(b) => Value::Array(b.iter().map(|&x| x.into()).collect()),
        ReflectValueRef::Enum(_, n) => n.into(),
        ReflectValueRef::Message(m) => to_input(&*m),
    }
}

fn map_key(k: ReflectValueRef<'_>) -> String {
    match k {
        ReflectValueRef::String(s) => s.to_owned(),
        other => match value(other) {
            Value::String(s) => s,
            v => v.to_string(),
        },
    }
}

fn key(name: &str) -> String {
    if RUST_KEYWORDS.contains(&name) {
        format!("{name}_")
    } else {
        name.to_owned()
    }
}

/// rust-protobuf's oneof variant name: the field name in CamelCase.
fn camel_case(name: &str) -> String {
    name.split('_')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let mut c = p.chars();
            c.next().map(|f| f.to_uppercase().chain(c).collect::<String>()).unwrap_or_default()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use contrast_agent_protocol::{agent, oci};
    use serde_json::json;

    #[test]
    fn exec_request_has_kata_agents_shape() {
        let mut req = agent::ExecProcessRequest::new();
        req.container_id = "c1".into();
        req.exec_id = "e1".into();
        let mut process = oci::Process::new();
        process.Args = vec!["sh".into(), "-c".into(), "echo hi".into()];
        req.process = Some(process).into();
        let input = to_input(&req);
        assert_eq!(input["container_id"], "c1");
        assert_eq!(input["exec_id"], "e1");
        assert_eq!(input["string_user"], Value::Null, "unset message field is null, not absent");
        assert_eq!(input["process"]["Args"], json!(["sh", "-c", "echo hi"]));
        assert_eq!(input["process"]["Terminal"], false, "defaults present");
        assert_eq!(input["process"]["Env"], json!([]));
        assert_eq!(input["process"]["Cwd"], "");
        assert_eq!(input["process"]["User"], Value::Null);
        assert_eq!(input["stdin_port"], 0);
    }

    #[test]
    fn create_container_paths_keywords_maps_numbers_and_bytes() {
        let mut spec = oci::Spec::new();
        let mut process = oci::Process::new();
        process.Args = vec!["httpd".into()];
        process.NoNewPrivileges = true;
        let mut user = oci::User::new();
        user.AdditionalGids = vec![0, 33];
        process.User = Some(user).into();
        spec.Process = Some(process).into();
        let mut root = oci::Root::new();
        root.Readonly = true;
        spec.Root = Some(root).into();
        spec.Annotations.insert("io.kubernetes.cri.container-name".into(), "web".into());
        let mut ns = oci::LinuxNamespace::new();
        ns.Type = "ipc".into();
        let mut linux = oci::Linux::new();
        linux.Namespaces = vec![ns];
        let mut mem = oci::LinuxMemory::new();
        mem.Limit = 1 << 40;
        let mut res = oci::LinuxResources::new();
        res.Memory = Some(mem).into();
        linux.Resources = Some(res).into();
        spec.Linux = Some(linux).into();
        let mut mount = oci::Mount::new();
        mount.type_ = "bind".into();
        spec.Mounts = vec![mount];
        let mut req = agent::CreateContainerRequest::new();
        req.OCI = Some(spec).into();
        let input = to_input(&req);
        assert_eq!(input["OCI"]["Process"]["Args"], json!(["httpd"]));
        // The fields the generated policy pins, by the names it uses.
        assert_eq!(input["OCI"]["Process"]["NoNewPrivileges"], true);
        assert_eq!(input["OCI"]["Process"]["User"]["AdditionalGids"], json!([0, 33]));
        assert_eq!(input["OCI"]["Root"]["Readonly"], true);
        assert_eq!(input["OCI"]["Annotations"]["io.kubernetes.cri.container-name"], "web");
        assert_eq!(input["OCI"]["Linux"]["Namespaces"][0]["Type"], "ipc");
        assert_eq!(input["OCI"]["Linux"]["Resources"]["Memory"]["Limit"], json!(1_i64 << 40), "int64 is a number");
        assert_eq!(input["OCI"]["Mounts"][0]["type_"], "bind", "keyword field names end in _");
        assert_eq!(input["OCI"]["Hooks"], Value::Null);
        assert_eq!(input["storages"], json!([]));
        let mut write = agent::WriteStreamRequest::new();
        write.data = b"hi".to_vec();
        assert_eq!(to_input(&write)["data"], json!([104, 105]), "bytes as numbers");
    }

    #[test]
    fn oneof_is_one_key() {
        let mut sc = oci::LinuxSyscall::new();
        sc.Names = vec!["ptrace".into()];
        let input = to_input(&sc);
        assert_eq!(input["ErrnoRet"], Value::Null);
        assert!(input.get("errnoret").is_none());
        sc.set_errnoret(1);
        assert_eq!(to_input(&sc)["ErrnoRet"], json!({ "Errnoret": 1 }));
    }
}
