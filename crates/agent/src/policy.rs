//! The pod policy: Rego set with `SetPolicy`, evaluated with `regorus` for every request.
//!
//! Rule names are kata-agent's (`data.agent_policy.CreateContainerRequest`, ...); the input is
//! the request as JSON with the protobuf field names. A rule that is missing or not `true`
//! denies. Without a policy every request is allowed on a plain VM, and only the health and
//! `SetPolicy` calls on a confidential one (SEV-SNP or TDX guest device present).

use std::path::Path;
use std::sync::Mutex;

use protobuf::MessageFull;

/// Package kata's policies declare.
const POLICY_PACKAGE: &str = "data.agent_policy";
/// Requests allowed in a confidential VM before any policy is set: setting the first policy.
const ALLOWED_WITHOUT_POLICY: &[&str] = &["SetPolicyRequest", "GuestDetailsRequest"];
/// Guest devices that exist only in confidential VMs (Linux sev-guest / tdx-guest drivers).
const CONFIDENTIAL_GUEST_DEVICES: &[&str] = &["/dev/sev-guest", "/dev/tdx_guest"];

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("policy does not compile: {0}")]
    Invalid(String),
    #[error("{0} is denied by the pod policy")]
    Denied(String),
    #[error("{0} is denied: no policy is set in this confidential VM")]
    NoPolicy(String),
}

pub struct Policy {
    engine: Mutex<Option<regorus::Engine>>,
    confidential: bool,
}

impl Policy {
    pub fn new() -> Self {
        let confidential = CONFIDENTIAL_GUEST_DEVICES.iter().any(|d| Path::new(d).exists());
        Policy { engine: Mutex::new(None), confidential }
    }

    /// Replaces the policy; a policy that does not compile leaves the old one in place.
    pub fn set(&self, rego: &str) -> Result<(), PolicyError> {
        let mut engine = regorus::Engine::new();
        engine.add_policy("policy.rego".into(), rego.into()).map_err(|e| PolicyError::Invalid(e.to_string()))?;
        *self.lock() = Some(engine);
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<regorus::Engine>> {
        self.engine.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Checks one request against the policy; `M`'s message name is the rule name.
    pub fn allow<M: MessageFull>(&self, req: &M) -> Result<(), PolicyError> {
        let rule = M::descriptor().name().to_owned();
        let mut guard = self.lock();
        let Some(engine) = guard.as_mut() else {
            return if self.confidential && !ALLOWED_WITHOUT_POLICY.contains(&rule.as_str()) {
                Err(PolicyError::NoPolicy(rule))
            } else {
                Ok(())
            };
        };
        let options = protobuf_json_mapping::PrintOptions { proto_field_name: true, ..Default::default() };
        let input = protobuf_json_mapping::print_to_string_with_options(req, &options)
            .map_err(|e| PolicyError::Denied(format!("{rule} (cannot encode input: {e})")))?;
        engine.set_input_json(&input).map_err(|e| PolicyError::Denied(format!("{rule} (bad input: {e})")))?;
        match engine.eval_rule(format!("{POLICY_PACKAGE}.{rule}")) {
            Ok(regorus::Value::Bool(true)) => Ok(()),
            _ => Err(PolicyError::Denied(rule)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use contrast_agent_protocol::agent;

    const NO_EXEC: &str = r#"
package agent_policy
default CreateContainerRequest := true
default ExecProcessRequest := false
ExecProcessRequest if { input.container_id == "debug" }
"#;

    #[test]
    fn rules_allow_deny_and_missing_rules_deny() {
        let p = Policy { engine: Mutex::new(None), confidential: false };
        p.set(NO_EXEC).expect("compiles");
        assert!(p.allow(&agent::CreateContainerRequest::new()).is_ok());
        let mut exec = agent::ExecProcessRequest::new();
        exec.container_id = "web".into();
        assert!(matches!(p.allow(&exec), Err(PolicyError::Denied(_))));
        exec.container_id = "debug".into();
        assert!(p.allow(&exec).is_ok(), "input uses protobuf field names");
        // No rule for StartContainerRequest: denied.
        assert!(p.allow(&agent::StartContainerRequest::new()).is_err());
    }

    #[test]
    fn garbage_policy_is_refused_and_old_one_kept() {
        let p = Policy { engine: Mutex::new(None), confidential: false };
        p.set(NO_EXEC).expect("compiles");
        assert!(matches!(p.set("package agent_policy\nthis is not rego {"), Err(PolicyError::Invalid(_))));
        assert!(p.allow(&agent::CreateContainerRequest::new()).is_ok());
    }

    #[test]
    fn confidential_vm_without_policy_denies() {
        let p = Policy { engine: Mutex::new(None), confidential: true };
        assert!(matches!(p.allow(&agent::CreateContainerRequest::new()), Err(PolicyError::NoPolicy(_))));
        let plain = Policy { engine: Mutex::new(None), confidential: false };
        assert!(plain.allow(&agent::CreateContainerRequest::new()).is_ok());
    }
}
