//! What containerd already has on the node for a container's image: its manifest and layer
//! blobs, read through containerd's own API (`containerd.services.images.v1.Images/Get`,
//! `containerd.services.content.v1.Content/Read`) on its gRPC socket. The messages are the
//! few fields we read, declared here (field numbers as in containerd's `api/` protos, the
//! same in 1.6, 1.7 and 2.x); the namespace goes in the `containerd-namespace` header.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tonic::transport::{Channel, Endpoint, Uri};

const NAMESPACE_HEADER: &str = "containerd-namespace";
const IMAGES_GET: &str = "/containerd.services.images.v1.Images/Get";
const CONTENT_READ: &str = "/containerd.services.content.v1.Content/Read";
/// Largest manifest or index we parse.
const MAX_MANIFEST: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("connecting to containerd at {}: {source}", socket.display())]
    Connect { socket: PathBuf, source: tonic::transport::Error },
    #[error("containerd {call}: {status}")]
    Call { call: &'static str, status: Box<tonic::Status> },
    #[error("image {0:?} is not in containerd (namespace {1})")]
    NoImage(String, String),
    #[error("image {image}: {problem}")]
    Manifest { image: String, problem: String },
    #[error("blob {digest}: content does not match its digest")]
    Digest { digest: String },
}

#[derive(Clone, PartialEq, prost::Message)]
struct GetImageRequest {
    #[prost(string, tag = "1")]
    name: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct GetImageResponse {
    #[prost(message, optional, tag = "1")]
    image: Option<Image>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Image {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(message, optional, tag = "3")]
    target: Option<Descriptor>,
}

/// `containerd.types.Descriptor`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Descriptor {
    #[prost(string, tag = "1")]
    pub media_type: String,
    #[prost(string, tag = "2")]
    pub digest: String,
    #[prost(int64, tag = "3")]
    pub size: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ReadContentRequest {
    #[prost(string, tag = "1")]
    digest: String,
    #[prost(int64, tag = "2")]
    offset: i64,
    #[prost(int64, tag = "3")]
    size: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ReadContentResponse {
    #[prost(int64, tag = "1")]
    offset: i64,
    #[prost(bytes = "vec", tag = "2")]
    data: Vec<u8>,
}

/// An image's manifest for linux/amd64: its config blob's digest and its layers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The digest the image's name resolved to (an index's or a manifest's): what
    /// `NAME@sha256:…` pins.
    pub target: String,
    pub config: String,
    pub layers: Vec<Layer>,
}

/// A layer of an image manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
}

pub struct Client {
    grpc: tonic::client::Grpc<Channel>,
    namespace: String,
}

impl Client {
    pub async fn connect(socket: &Path, namespace: &str) -> Result<Self, Error> {
        let path = socket.to_owned();
        let channel = Endpoint::from_static("http://[::]:50051")
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move {
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tokio::net::UnixStream::connect(path).await?))
                }
            }))
            .await
            .map_err(|source| Error::Connect { socket: socket.to_owned(), source })?;
        Ok(Client { grpc: tonic::client::Grpc::new(channel), namespace: namespace.to_owned() })
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(message);
        if let Ok(v) = self.namespace.parse() {
            req.metadata_mut().insert(NAMESPACE_HEADER, v);
        }
        req
    }

    /// The layers (bottom first) of `image` for linux/amd64.
    pub async fn image_layers(&mut self, image: &str) -> Result<Vec<Layer>, Error> {
        Ok(self.image_manifest(image).await?.layers)
    }

    /// The manifest of `image` for linux/amd64: config digest and layers (bottom first).
    pub async fn image_manifest(&mut self, image: &str) -> Result<Manifest, Error> {
        let call = |status| Error::Call { call: "Images/Get", status: Box::new(status) };
        self.grpc.ready().await.map_err(|e| call(tonic::Status::unavailable(e.to_string())))?;
        let path = http::uri::PathAndQuery::from_static(IMAGES_GET);
        let req = self.request(GetImageRequest { name: image.to_owned() });
        let resp: tonic::Response<GetImageResponse> =
            match self.grpc.unary(req, path, tonic_prost::ProstCodec::default()).await {
                Ok(r) => r,
                Err(s) if s.code() == tonic::Code::NotFound => {
                    return Err(Error::NoImage(image.to_owned(), self.namespace.clone()))
                }
                Err(s) => return Err(call(s)),
            };
        let target = resp
            .into_inner()
            .image
            .and_then(|i| i.target)
            .ok_or_else(|| Error::NoImage(image.to_owned(), self.namespace.clone()))?;
        let bad = |problem: String| Error::Manifest { image: image.to_owned(), problem };
        // A name with a digest is that image or none (containerd keeps names as given).
        if let Some((_, pinned)) = image.rsplit_once('@') {
            if pinned != target.digest {
                return Err(bad(format!(
                    "containerd's image of that name is {}, not the {pinned} it names",
                    target.digest
                )));
            }
        }
        let resolved = target.digest.clone();
        let mut descriptor = target;
        // An index: its linux/amd64 manifest (nested indexes followed a few levels).
        for _ in 0..4 {
            let blob = self.read_blob(&descriptor.digest, MAX_MANIFEST).await?;
            let doc: serde_json::Value =
                serde_json::from_slice(&blob).map_err(|e| bad(format!("{} is not JSON: {e}", descriptor.digest)))?;
            if let Some(manifests) = doc["manifests"].as_array() {
                let pick = manifests
                    .iter()
                    .find(|m| m["platform"]["os"] == "linux" && m["platform"]["architecture"] == "amd64")
                    .or_else(|| manifests.iter().find(|m| m["platform"].is_null()))
                    .ok_or_else(|| bad("no linux/amd64 manifest in its index".into()))?;
                descriptor = Descriptor {
                    media_type: pick["mediaType"].as_str().unwrap_or_default().to_owned(),
                    digest: pick["digest"].as_str().unwrap_or_default().to_owned(),
                    size: pick["size"].as_i64().unwrap_or_default(),
                };
                continue;
            }
            let layers = doc["layers"].as_array().ok_or_else(|| bad("manifest without layers".into()))?;
            let config = doc["config"]["digest"].as_str().ok_or_else(|| bad("manifest without a config".into()))?;
            let layers = layers
                .iter()
                .map(|l| {
                    Ok(Layer {
                        media_type: l["mediaType"].as_str().unwrap_or_default().to_owned(),
                        digest: l["digest"].as_str().ok_or_else(|| bad("layer without a digest".into()))?.to_owned(),
                        size: l["size"].as_u64().unwrap_or_default(),
                    })
                })
                .collect::<Result<_, Error>>()?;
            return Ok(Manifest { target: resolved, config: config.to_owned(), layers });
        }
        Err(bad("indexes nested too deep".into()))
    }

    /// A blob of the content store, checked against its sha256 digest.
    pub async fn read_blob(&mut self, digest: &str, max: usize) -> Result<Vec<u8>, Error> {
        let call = |status| Error::Call { call: "Content/Read", status: Box::new(status) };
        self.grpc.ready().await.map_err(|e| call(tonic::Status::unavailable(e.to_string())))?;
        let path = http::uri::PathAndQuery::from_static(CONTENT_READ);
        let req = self.request(ReadContentRequest { digest: digest.to_owned(), offset: 0, size: 0 });
        let mut stream = self
            .grpc
            .server_streaming::<_, ReadContentResponse, _>(req, path, tonic_prost::ProstCodec::default())
            .await
            .map_err(call)?
            .into_inner();
        let mut out = Vec::new();
        // Hashed chunk by chunk as it arrives: one digest over a blob of up to gigabytes at
        // the end would hold a single-threaded caller (the shim) for seconds.
        let mut hasher = Sha256::new();
        while let Some(chunk) = stream.message().await.map_err(call)? {
            hasher.update(&chunk.data);
            out.extend_from_slice(&chunk.data);
            if out.len() > max {
                return Err(call(tonic::Status::resource_exhausted(format!(
                    "blob {digest} is larger than {max} bytes"
                ))));
            }
        }
        let want = digest.strip_prefix("sha256:").ok_or_else(|| Error::Digest { digest: digest.to_owned() })?;
        let got: String = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
        if got != want {
            return Err(Error::Digest { digest: digest.to_owned() });
        }
        Ok(out)
    }
}
