//! The pod policy, evaluated with `regorus` for every request, kata-agent's way: the rule
//! `data.agent_policy.<RequestName>` over the request as kata serializes it
//! ([`crate::policy_input`]); `true`, or an object with `"allowed": true`, allows. A rule that
//! is missing or anything else denies, and the denial carries the policy's `print` output.
//!
//! Where the policy comes from decides the mode ([`crate::measured`]): the init data the
//! launch is bound to (verified before this agent serves anything), or — when that check
//! failed — a deny-all that names the reason. `SetPolicy` is judged by the current policy
//! like every other request: the host cannot swap a measured policy for its own.

use std::sync::Mutex;

use protobuf::MessageFull;

/// Package kata's policies declare.
const POLICY_PACKAGE: &str = "data.agent_policy";
/// kata's escape hatch for debugging policies: when true, denials are logged, not enforced.
const ALLOW_FAILING_RULE: &str = "AllowRequestsFailingPolicy";

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("policy does not compile: {0}")]
    Invalid(String),
    /// kata-agent's words ("<Request> is blocked by policy: <prints>").
    #[error("{rule} is blocked by policy: {prints}")]
    Denied { rule: String, prints: String },
    /// The init data check failed: nothing is served.
    #[error("{rule} is blocked: {reason}")]
    Blocked { rule: String, reason: String },
}

enum Mode {
    /// No policy: a plain VM without init data. Everything is allowed.
    Open,
    Enforcing {
        engine: Box<regorus::Engine>,
        allow_failures: bool,
        /// `data.pstate`, changed by the `ops` of allowed requests.
        state: serde_json::Value,
    },
    /// The launch check failed; every request is refused with this reason.
    DenyAll(String),
}

pub struct Policy {
    mode: Mutex<Mode>,
}

impl Policy {
    /// No policy: only for a plain VM that was given no init data.
    pub fn open() -> Self {
        Policy { mode: Mutex::new(Mode::Open) }
    }

    /// Refuses every request, naming `reason`.
    pub fn deny_all(reason: String) -> Self {
        Policy { mode: Mutex::new(Mode::DenyAll(reason)) }
    }

    /// Enforces `rego`.
    pub fn enforcing(rego: &str) -> Result<Self, PolicyError> {
        Ok(Policy { mode: Mutex::new(compile(rego)?) })
    }

    /// Replaces the policy (after `SetPolicy` was allowed); a policy that does not compile
    /// leaves the old one in place.
    pub fn set(&self, rego: &str) -> Result<(), PolicyError> {
        let mode = compile(rego)?;
        *self.lock() = mode;
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Mode> {
        self.mode.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Checks one request against the policy; `M`'s message name is the rule name. The
    /// policy's state changes at once (see [`Policy::check`] for requests that can fail).
    pub fn allow<M: MessageFull>(&self, req: &M) -> Result<(), PolicyError> {
        let allowed = self.check(req)?;
        self.commit(allowed);
        Ok(())
    }

    /// Checks one request against the policy, without changing its state yet: the state
    /// changes the allowed request brings (its `ops`) are made by [`Policy::commit`], once
    /// the request has succeeded — a create refused by the agent (an id in use, say) must
    /// not change what the state says of the container that has that id.
    pub fn check<M: MessageFull>(&self, req: &M) -> Result<Allowed, PolicyError> {
        let rule = M::descriptor().name().to_owned();
        let mut mode = self.lock();
        let (engine, allow_failures, state) = match &mut *mode {
            Mode::Open => return Ok(Allowed { ops: Vec::new() }),
            Mode::DenyAll(reason) => return Err(PolicyError::Blocked { rule, reason: reason.clone() }),
            Mode::Enforcing { engine, allow_failures, state } => (engine, *allow_failures, state),
        };
        let input = crate::policy_input::to_input(req).to_string();
        // Ops that could not apply to the state as it is deny, as a policy error.
        let verdict = evaluate(engine, &rule, &input).and_then(|ops| match patched(state, &ops) {
            Ok(_) => Ok(ops),
            Err(why) => Err(PolicyError::Denied { rule: rule.clone(), prints: why }),
        });
        match verdict {
            Ok(ops) => Ok(Allowed { ops }),
            Err(e) if allow_failures => {
                crate::log!("policy: {e} (allowed: {ALLOW_FAILING_RULE} is true)");
                Ok(Allowed { ops: Vec::new() })
            }
            Err(e) => Err(e),
        }
    }

    /// Makes the state changes of a request [`Policy::check`] allowed and that succeeded.
    pub fn commit(&self, allowed: Allowed) {
        if allowed.ops.is_empty() {
            return;
        }
        let mut mode = self.lock();
        if let Mode::Enforcing { engine, state, .. } = &mut *mode {
            if let Err(e) = apply_state_ops(engine, state, &allowed.ops) {
                crate::log!("policy: state not changed: {e}");
            }
        }
    }
}

/// An allowed request's changes to the policy's state, made by [`Policy::commit`].
#[must_use = "an allowed request's state changes are made by Policy::commit"]
pub struct Allowed {
    ops: Vec<serde_json::Value>,
}

fn compile(rego: &str) -> Result<Mode, PolicyError> {
    let mut engine = regorus::Engine::new();
    engine.set_gather_prints(true);
    engine.add_policy("policy.rego".into(), rego.into()).map_err(|e| PolicyError::Invalid(e.to_string()))?;
    if !engine.get_packages().map_err(|e| PolicyError::Invalid(e.to_string()))?.iter().any(|p| p == POLICY_PACKAGE) {
        return Err(PolicyError::Invalid("the policy must declare `package agent_policy`".into()));
    }
    let state = serde_json::json!({});
    engine
        .add_data_json(&serde_json::json!({ STATE_KEY: state }).to_string())
        .map_err(|e| PolicyError::Invalid(e.to_string()))?;
    engine.set_input_json("{}").map_err(|e| PolicyError::Invalid(e.to_string()))?;
    let allow_failures =
        matches!(engine.eval_rule(format!("{POLICY_PACKAGE}.{ALLOW_FAILING_RULE}")), Ok(regorus::Value::Bool(true)));
    let _ = engine.take_prints();
    if allow_failures {
        crate::log!("policy: {ALLOW_FAILING_RULE} is true: denials are logged, NOT enforced");
    }
    Ok(Mode::Enforcing { engine: Box::new(engine), allow_failures, state })
}

/// Evaluates `rule` over `input`: allowed, with the state changes (`ops`) it brings, or
/// denied.
fn evaluate(engine: &mut regorus::Engine, rule: &str, input: &str) -> Result<Vec<serde_json::Value>, PolicyError> {
    let denied = |engine: &mut regorus::Engine, why: Option<String>| {
        let mut prints = engine.take_prints().unwrap_or_default();
        prints.extend(why);
        PolicyError::Denied { rule: rule.to_owned(), prints: prints.join(" ") }
    };
    if let Err(e) = engine.set_input_json(input) {
        return Err(denied(engine, Some(format!("cannot read the request: {e}"))));
    }
    let result = engine.eval_rule(format!("{POLICY_PACKAGE}.{rule}"));
    let allowed = match &result {
        Ok(regorus::Value::Bool(b)) => *b,
        // genpolicy's rules answer `{"allowed": true, "ops": [...]}` for stateful requests:
        // the ops (JSON patch) change `data.pstate` for later requests.
        Ok(v @ regorus::Value::Object(_)) => matches!(v["allowed"], regorus::Value::Bool(true)),
        _ => false,
    };
    if allowed {
        let _ = engine.take_prints();
        return match &result {
            Ok(v @ regorus::Value::Object(_)) => {
                state_ops(&v["ops"]).map_err(|why| PolicyError::Denied { rule: rule.to_owned(), prints: why })
            }
            _ => Ok(Vec::new()),
        };
    }
    let why = match result {
        Err(e) => Some(format!("evaluation failed: {e}")),
        Ok(regorus::Value::Undefined) => Some(format!("no rule {rule} allows it")),
        Ok(_) => None,
    };
    Err(denied(engine, why))
}

/// Where policy state lives in the engine's data (kata: `data.pstate`).
const STATE_KEY: &str = "pstate";

/// A rule's `ops`, as a list (none when it gives none).
fn state_ops(ops: &regorus::Value) -> Result<Vec<serde_json::Value>, String> {
    if matches!(ops, regorus::Value::Undefined | regorus::Value::Null) {
        return Ok(Vec::new());
    }
    serde_json::to_value(ops).and_then(serde_json::from_value).map_err(|e| format!("policy ops are not a list: {e}"))
}

/// Applies a rule's `ops` (RFC 6902 `add` / `replace` / `remove` under `/pstate`) and hands
/// the new state to the engine. Nothing changes when an op is bad.
fn apply_state_ops(
    engine: &mut regorus::Engine,
    state: &mut serde_json::Value,
    ops: &[serde_json::Value],
) -> Result<(), String> {
    let mut doc = patched(state, ops)?;
    engine.clear_data();
    engine.add_data_json(&doc.to_string()).map_err(|e| format!("policy state: {e}"))?;
    *state = doc[STATE_KEY].take();
    Ok(())
}

/// `{ "pstate": state }` with `ops` applied.
fn patched(state: &serde_json::Value, ops: &[serde_json::Value]) -> Result<serde_json::Value, String> {
    let mut doc = serde_json::json!({ STATE_KEY: state.clone() });
    for op in ops {
        apply_op(&mut doc, op)?;
    }
    Ok(doc)
}

fn apply_op(doc: &mut serde_json::Value, op: &serde_json::Value) -> Result<(), String> {
    let kind = op["op"].as_str().ok_or("policy op without \"op\"")?;
    let path = op["path"].as_str().ok_or("policy op without \"path\"")?;
    let tokens: Vec<String> = path
        .strip_prefix('/')
        .ok_or_else(|| format!("policy op path {path:?} is not a JSON pointer"))?
        .split('/')
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect();
    if tokens.first().map(String::as_str) != Some(STATE_KEY) || tokens.len() < 2 {
        return Err(format!("policy op path {path:?} is outside /{STATE_KEY}"));
    }
    let (last, parents) = tokens.split_last().expect("two tokens or more");
    let mut parent = &mut *doc;
    for t in parents {
        parent = match parent {
            serde_json::Value::Object(m) => m.get_mut(t),
            serde_json::Value::Array(a) => t.parse::<usize>().ok().and_then(|i| a.get_mut(i)),
            _ => None,
        }
        .ok_or_else(|| format!("policy op path {path:?}: {t} does not exist"))?;
    }
    let value = || op.get("value").cloned().ok_or_else(|| format!("policy op {kind} {path:?} without a value"));
    match (kind, parent) {
        ("add" | "replace", serde_json::Value::Object(m)) => {
            if kind == "replace" && !m.contains_key(last) {
                return Err(format!("policy op replace {path:?}: nothing to replace"));
            }
            m.insert(last.clone(), value()?);
        }
        ("add", serde_json::Value::Array(a)) if last == "-" => a.push(value()?),
        ("remove", serde_json::Value::Object(m)) => {
            m.remove(last).ok_or_else(|| format!("policy op remove {path:?}: nothing to remove"))?;
        }
        _ => return Err(format!("policy op {kind} {path:?} is not supported")),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use contrast_agent_protocol::{agent, oci};

    const NO_EXEC: &str = r#"
package agent_policy
default CreateContainerRequest := true
default ExecProcessRequest := false
ExecProcessRequest if { input.container_id == "debug" }
"#;

    fn exec(container: &str, args: &[&str]) -> agent::ExecProcessRequest {
        let mut req = agent::ExecProcessRequest::new();
        req.container_id = container.into();
        let mut p = oci::Process::new();
        p.Args = args.iter().map(|a| a.to_string()).collect();
        req.process = Some(p).into();
        req
    }

    #[test]
    fn rules_allow_deny_and_missing_rules_deny() {
        let p = Policy::enforcing(NO_EXEC).expect("compiles");
        assert!(p.allow(&agent::CreateContainerRequest::new()).is_ok());
        assert!(matches!(p.allow(&exec("web", &[])), Err(PolicyError::Denied { .. })));
        assert!(p.allow(&exec("debug", &[])).is_ok(), "input uses protobuf field names");
        let e = p.allow(&agent::StartContainerRequest::new()).expect_err("no rule");
        assert!(e.to_string().contains("StartContainerRequest is blocked by policy"), "{e}");
    }

    #[test]
    fn kata_style_rules_on_oci_process_args_with_prints() {
        let rego = r#"
package agent_policy
default ExecProcessRequest := false
ExecProcessRequest if { input.process.Args == ["echo", "allowed"] }
ExecProcessRequest if {
    not input.process.Args == ["echo", "allowed"]
    print("exec of", concat(" ", input.process.Args), "is not in the policy")
    false
}
default CreateContainerRequest := false
CreateContainerRequest := {"allowed": true, "ops": []} if { input.OCI.Process.Args[0] == "httpd" }
"#;
        let p = Policy::enforcing(rego).expect("compiles");
        assert!(p.allow(&exec("c", &["echo", "allowed"])).is_ok());
        let e = p.allow(&exec("c", &["cat", "/etc/shadow"])).expect_err("denied");
        assert!(e.to_string().contains("exec of cat /etc/shadow is not in the policy"), "{e}");
        let mut create = agent::CreateContainerRequest::new();
        let mut spec = oci::Spec::new();
        let mut proc_ = oci::Process::new();
        proc_.Args = vec!["httpd".into()];
        spec.Process = Some(proc_).into();
        create.OCI = Some(spec.clone()).into();
        assert!(p.allow(&create).is_ok(), "object answer with allowed: true");
        spec.Process.as_mut().expect("process").Args = vec!["sh".into()];
        create.OCI = Some(spec).into();
        assert!(p.allow(&create).is_err());
    }

    #[test]
    fn set_policy_is_judged_by_the_current_policy() {
        let p = Policy::enforcing("package agent_policy\ndefault SetPolicyRequest := false\n").expect("compiles");
        let mut req = agent::SetPolicyRequest::new();
        req.policy = "package agent_policy\ndefault ExecProcessRequest := true\n".into();
        assert!(matches!(p.allow(&req), Err(PolicyError::Denied { .. })));
    }

    #[test]
    fn garbage_policy_is_refused_and_old_one_kept() {
        let p = Policy::enforcing(NO_EXEC).expect("compiles");
        assert!(matches!(p.set("package agent_policy\nthis is not rego {"), Err(PolicyError::Invalid(_))));
        assert!(matches!(p.set("package other\ndefault X := true\n"), Err(PolicyError::Invalid(_))));
        assert!(p.allow(&agent::CreateContainerRequest::new()).is_ok());
    }

    #[test]
    fn deny_all_names_the_reason_for_every_request() {
        let p = Policy::deny_all("init data does not match the launch binding".into());
        let e = p.allow(&agent::CreateSandboxRequest::new()).expect_err("blocked");
        assert_eq!(e.to_string(), "CreateSandboxRequest is blocked: init data does not match the launch binding");
        assert!(p.allow(&agent::SetPolicyRequest::new()).is_err(), "no way out through SetPolicy");
        assert!(Policy::open().allow(&agent::CreateContainerRequest::new()).is_ok());
    }

    #[test]
    fn genpolicy_state_ops_carry_over_to_later_requests() {
        let rego = r#"
package agent_policy
CreateContainerRequest := {"allowed": true, "ops": [{"op": "add", "path": "/pstate/c1", "value": "web"}]} if {
    input.container_id == "c1"
}
default ExecProcessRequest := false
ExecProcessRequest if { data.pstate[input.container_id] == "web" }
RemoveContainerRequest := {"allowed": true, "ops": [{"op": "remove", "path": "/pstate/c1"}]}
"#;
        let p = Policy::enforcing(rego).expect("compiles");
        assert!(p.allow(&exec("c1", &["true"])).is_err(), "no state yet");
        let mut create = agent::CreateContainerRequest::new();
        create.container_id = "c1".into();
        p.allow(&create).expect("allowed, records state");
        p.allow(&exec("c1", &["true"])).expect("state from the create");
        p.allow(&agent::RemoveContainerRequest::new()).expect("remove");
        assert!(p.allow(&exec("c1", &["true"])).is_err(), "state removed");
        // A request allowed but not carried out changes nothing.
        let pending = p.check(&create).expect("allowed");
        drop(pending);
        assert!(p.allow(&exec("c1", &["true"])).is_err(), "a create that failed keeps no state");
        let pending = p.check(&create).expect("allowed");
        p.commit(pending);
        p.allow(&exec("c1", &["true"])).expect("committed");
        let bad = "package agent_policy\nStartContainerRequest := {\"allowed\": true, \"ops\": [{\"op\": \"add\", \"path\": \"/etc\", \"value\": 1}]}\n";
        let p = Policy::enforcing(bad).expect("compiles");
        let e = p.allow(&agent::StartContainerRequest::new()).expect_err("op outside pstate");
        assert!(e.to_string().contains("outside /pstate"), "{e}");
    }

    #[test]
    fn allow_requests_failing_policy_is_honoured() {
        let p = Policy::enforcing("package agent_policy\nAllowRequestsFailingPolicy := true\n").expect("compiles");
        assert!(p.allow(&agent::CreateContainerRequest::new()).is_ok());
    }
}
