use std::path::PathBuf;

/// Everything that can be wrong with a runtime-class config or a pod's overrides.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read runtime config {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("runtime config {}{}: {message}", path.display(), span.map(|l| format!(" line {l}")).unwrap_or_default())]
    Parse { path: PathBuf, message: String, span: Option<usize> },
    #[error("runtime config {}: key `{key}`: {problem}", path.display())]
    Invalid { path: PathBuf, key: String, problem: String },
    #[error("annotation {key}: {problem}")]
    Annotation { key: String, problem: String },
}

impl Error {
    /// Whether the error comes from the pod's request (annotations) rather than the node's config.
    pub fn is_pod_input(&self) -> bool {
        matches!(self, Error::Annotation { .. })
    }
}
