//! The Kubernetes objects for one runtime handler: its RuntimeClass and the DaemonSet that
//! installs it, built from the same payload as `install` so names and hashes cannot drift.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetSpec};
use k8s_openapi::api::core::v1::{
    Container, HostPathVolumeSource, PodSpec, PodTemplateSpec, SecurityContext, Toleration, Volume, VolumeMount,
};
use k8s_openapi::api::node::v1::{Overhead, RuntimeClass, Scheduling};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

use crate::payload::Payload;

const HOST_ROOT: &str = "/host";
const PAYLOAD: &str = "/contrast";

pub struct Options {
    /// The installer's container image.
    pub image: String,
    pub namespace: String,
    pub pause_image: String,
    /// `--set` overrides, passed on to the installer in the DaemonSet.
    pub settings: Vec<String>,
}

pub fn render(payload: &Payload, opts: &Options) -> Result<String> {
    let memory = default_memory(payload, &opts.settings)?;
    let labels: BTreeMap<String, String> = [
        ("app.kubernetes.io/name".to_owned(), "contrast-node-installer".to_owned()),
        ("app.kubernetes.io/instance".to_owned(), payload.handler.clone()),
    ]
    .into();
    let runtime_class = RuntimeClass {
        metadata: ObjectMeta {
            name: Some(payload.handler.clone()),
            labels: Some(labels.clone()),
            ..Default::default()
        },
        handler: payload.handler.clone(),
        overhead: Some(Overhead {
            pod_fixed: Some(
                [(
                    "memory".to_owned(),
                    Quantity(format!(
                        "{}Mi",
                        memory + contrast_node_installer::overhead::overhead_mib(&payload.platform)?
                    )),
                )]
                .into(),
            ),
        }),
        // Pods of this class land only where the installer's check passed (its
        // node-feature-discovery feature file labels the node).
        scheduling: Some(Scheduling {
            node_selector: Some([(crate::install::node_label(&payload.handler), "true".to_owned())].into()),
            tolerations: None,
        }),
    };
    let mut args = vec![
        "install".to_owned(),
        "--platform".to_owned(),
        payload.platform.clone(),
        "--host-root".to_owned(),
        HOST_ROOT.to_owned(),
        "--payload".to_owned(),
        PAYLOAD.to_owned(),
        // Nodes of another platform (or none) in the cluster: no crash loop there, and no label.
        "--skip-unready".to_owned(),
    ];
    for s in &opts.settings {
        args.push("--set".to_owned());
        args.push(s.clone());
    }
    let installer = Container {
        name: "installer".to_owned(),
        image: Some(opts.image.clone()),
        command: Some(vec!["/contrast-node-installer".to_owned()]),
        args: Some(args),
        security_context: Some(SecurityContext { privileged: Some(true), ..Default::default() }),
        volume_mounts: Some(vec![VolumeMount {
            name: "host-root".to_owned(),
            mount_path: HOST_ROOT.to_owned(),
            ..Default::default()
        }]),
        ..Default::default()
    };
    let pause = Container { name: "pause".to_owned(), image: Some(opts.pause_image.clone()), ..Default::default() };
    let daemon_set = DaemonSet {
        metadata: ObjectMeta {
            name: Some(format!("{}-installer", payload.handler)),
            namespace: Some(opts.namespace.clone()),
            labels: Some(labels.clone()),
            ..Default::default()
        },
        spec: Some(DaemonSetSpec {
            selector: LabelSelector { match_labels: Some(labels.clone()), ..Default::default() },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(labels), ..Default::default() }),
                spec: Some(PodSpec {
                    // systemctl in PID 1's mount namespace is the restart fallback.
                    host_pid: Some(true),
                    // It talks to no API server.
                    automount_service_account_token: Some(false),
                    // Nodes set aside for confidential pods are often tainted; the installer
                    // decides for itself whether a node can run the platform.
                    tolerations: Some(vec![Toleration { operator: Some("Exists".to_owned()), ..Default::default() }]),
                    init_containers: Some(vec![installer]),
                    containers: vec![pause],
                    volumes: Some(vec![Volume {
                        name: "host-root".to_owned(),
                        host_path: Some(HostPathVolumeSource { path: "/".to_owned(), type_: None }),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        status: None,
    };
    let mut out = String::new();
    // k8s-openapi's serializers write `apiVersion` and `kind`.
    out.push_str(&serde_yaml::to_string(&runtime_class)?);
    out.push_str("---\n");
    out.push_str(&serde_yaml::to_string(&daemon_set)?);
    Ok(out)
}

/// `hypervisor.qemu.default_memory` (MiB) of the template with the overrides, defaults as the
/// shim applies them.
fn default_memory(payload: &Payload, settings: &[String]) -> Result<u64> {
    let mut doc: toml_edit::DocumentMut = payload.template.parse().context("payload config template")?;
    for s in settings {
        crate::install::apply_setting(&mut doc, s)?;
    }
    let config =
        contrast_config::RuntimeClassConfig::parse(&doc.to_string(), std::path::Path::new("configuration.toml"))?;
    Ok(config.hypervisor.qemu.default_memory.into())
}
