//! Instances as the replicas of one Deployment per pool, through the Kubernetes API.
//!
//! Scaling PATCHes the Deployment's `scale` subresource (`spec.replicas`); a pool seen
//! for the first time gets its Deployment from `infra/k8s/inference-deployment.json`
//! (GPU workers request `nvidia.com/gpu` there). Kubernetes itself restarts crashed
//! pods. Every tick, [`KubernetesBackend::refresh`] lists the inference Deployments
//! (one call, by label) and reads back each one's `spec.replicas` and
//! `status.readyReplicas`: the count the reconciler scales from is what the API server
//! holds (a Deployment deleted or scaled by hand is noticed and corrected), and a
//! cluster's `ready` instances are the pods passing their readiness probe. At start the
//! same listing adopts the Deployments an earlier autoscaler made (their annotations
//! name the pool), so a restart neither forgets running instances nor leaves a deleted
//! cluster's Deployment up. A pod that dies without reporting it is billed by the
//! reconciler from its heartbeat, as for every backend.
//!
//! In a pod, the API address, token and CA come from the service account
//! (`KUBERNETES_SERVICE_HOST`, `/var/run/secrets/kubernetes.io/serviceaccount/`).

use std::collections::BTreeMap;
use std::path::Path;

use super::Pool;

/// The Deployment template, with `{name}`, `{namespace}`, `{model}`, `{account}`,
/// `{replicas}`, `{image}` and `{instance_type}` to fill in.
pub const DEPLOYMENT_TEMPLATE: &str =
    include_str!("../../../../infra/k8s/inference-deployment.json");

/// Talks to one namespace of one cluster's API server.
#[derive(Debug)]
pub struct KubernetesBackend {
    api: String,
    token: Option<String>,
    namespace: String,
    image: String,
    http: reqwest::Client,
    /// Longest one API call may take, connecting included.
    timeout: std::time::Duration,
    replicas: BTreeMap<Pool, u32>,
    /// `status.readyReplicas` per pool, as last listed.
    ready: BTreeMap<Pool, u32>,
}

/// How long one API call may take by default. Without a bound, an API server that
/// takes the connection and never answers would hold the reconciler's tick forever:
/// no pool scaled up, none scaled to zero (and billed on). With it, the call fails,
/// the tick reports the error, and the next tick tries again.
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A Deployment name for `pool`: DNS-1123, at most 63 characters, stable.
pub fn deployment_name(pool: &Pool) -> String {
    // FNV-1a over the pool's name: short, stable across versions, no collisions in
    // practice for the handful of clusters a namespace holds.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in pool.to_string().bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    match pool {
        Pool::Translators => "switchyard-translator".to_string(),
        Pool::Cluster { model, .. } => {
            let slug: String = model
                .rsplit('/')
                .next()
                .unwrap_or(model)
                .to_ascii_lowercase()
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
                .take(30)
                .collect();
            format!("sy-{}-{h:016x}", slug.trim_matches('-'))
        }
    }
}

impl KubernetesBackend {
    /// `api`: e.g. `https://10.0.0.1:443`; `ca_pem`: the API server's CA, if not a
    /// public one; `token`: a bearer token allowed to get, create and patch Deployments
    /// (and their scale) in `namespace`.
    pub fn new(
        api: String,
        token: Option<String>,
        ca_pem: Option<Vec<u8>>,
        namespace: String,
        image: String,
    ) -> Result<Self, String> {
        let mut builder = reqwest::Client::builder();
        if let Some(pem) = ca_pem {
            let cert = reqwest::Certificate::from_pem(&pem)
                .map_err(|e| format!("invalid Kubernetes CA certificate: {e}"))?;
            builder = builder.add_root_certificate(cert);
        }
        let http = builder
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(Self {
            api: api.trim_end_matches('/').to_string(),
            token,
            namespace,
            image,
            http,
            timeout: REQUEST_TIMEOUT,
            replicas: BTreeMap::new(),
            ready: BTreeMap::new(),
        })
    }

    /// From the pod's service account.
    pub fn in_cluster(namespace: Option<String>, image: String) -> Result<Self, String> {
        let dir = Path::new("/var/run/secrets/kubernetes.io/serviceaccount");
        let host = std::env::var("KUBERNETES_SERVICE_HOST")
            .map_err(|_| "KUBERNETES_SERVICE_HOST is not set: not running in a pod".to_string())?;
        let port = std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
        let token = std::fs::read_to_string(dir.join("token"))
            .map_err(|e| format!("cannot read the service account token: {e}"))?;
        let ca = std::fs::read(dir.join("ca.crt")).ok();
        let namespace = match namespace {
            Some(n) => n,
            None => std::fs::read_to_string(dir.join("namespace"))
                .map_err(|e| format!("cannot read the pod's namespace: {e}"))?
                .trim()
                .to_string(),
        };
        Self::new(
            format!("https://{host}:{port}"),
            Some(token.trim().to_string()),
            ca,
            namespace,
            image,
        )
    }

    pub fn count(&self, pool: &Pool) -> u32 {
        self.replicas.get(pool).copied().unwrap_or(0)
    }

    /// Pods of `pool` passing their readiness probe, as last listed.
    pub fn ready(&self, pool: &Pool) -> u32 {
        self.ready.get(pool).copied().unwrap_or(0)
    }

    /// Takes over the inference Deployments already in the namespace: a first
    /// [`refresh`](Self::refresh). Returns how many it adopted.
    pub async fn adopt(&mut self) -> Result<usize, String> {
        self.refresh().await
    }

    /// Reads back every inference Deployment (labels
    /// `app.kubernetes.io/part-of=switchyard`, `app.kubernetes.io/component=inference`;
    /// annotations `switchyard.dev/model` and `switchyard.dev/account` name the pool):
    /// `spec.replicas` becomes the pool's count, `status.readyReplicas` its ready
    /// instances. A cluster pool whose Deployment is gone counts zero. Returns how many
    /// Deployments it read.
    pub async fn refresh(&mut self) -> Result<usize, String> {
        let path = format!(
            "/apis/apps/v1/namespaces/{}/deployments?labelSelector=app.kubernetes.io%2Fpart-of%3Dswitchyard%2Capp.kubernetes.io%2Fcomponent%3Dinference",
            self.namespace
        );
        let res = self
            .request(reqwest::Method::GET, &path)
            .send()
            .await
            .map_err(|e| self.call_failed(&e))?;
        let status = res.status().as_u16();
        if status != 200 {
            let text = res.text().await.unwrap_or_default();
            return Err(format!("listing Deployments: HTTP {status}: {text}"));
        }
        let list: serde_json::Value = res
            .json()
            .await
            .map_err(|e| format!("listing Deployments: {e}"))?;
        let count =
            |v: &serde_json::Value| u32::try_from(v.as_u64().unwrap_or(0)).unwrap_or(u32::MAX);
        // The translator Deployment is not listed (not an inference one): keep its count.
        self.replicas.retain(|p, _| *p == Pool::Translators);
        self.ready.clear();
        let mut read = 0;
        for item in list["items"].as_array().into_iter().flatten() {
            let annotations = &item["metadata"]["annotations"];
            let (Some(model), Some(account)) = (
                annotations["switchyard.dev/model"].as_str(),
                annotations["switchyard.dev/account"].as_str(),
            ) else {
                continue;
            };
            let pool = Pool::Cluster {
                account: account.to_string(),
                model: model.to_string(),
            };
            self.replicas
                .insert(pool.clone(), count(&item["spec"]["replicas"]));
            self.ready
                .insert(pool, count(&item["status"]["readyReplicas"]));
            read += 1;
        }
        Ok(read)
    }

    pub fn pools(&self) -> Vec<Pool> {
        self.replicas
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(p, _)| p.clone())
            .collect()
    }

    /// Another bound for each API call than [`REQUEST_TIMEOUT`].
    pub fn with_request_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Why an API call got no answer.
    fn call_failed(&self, e: &reqwest::Error) -> String {
        if e.is_timeout() {
            format!("Kubernetes API: no answer within {:?}", self.timeout)
        } else {
            format!("Kubernetes API: {e}")
        }
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut r = self
            .http
            .request(method, format!("{}{path}", self.api))
            .timeout(self.timeout);
        if let Some(t) = &self.token {
            r = r.bearer_auth(t);
        }
        r
    }

    pub async fn scale(&mut self, pool: &Pool, want: u32) -> Result<(), String> {
        let name = deployment_name(pool);
        let path = format!(
            "/apis/apps/v1/namespaces/{}/deployments/{name}/scale",
            self.namespace
        );
        let body = serde_json::json!({"spec": {"replicas": want}});
        let res = self
            .request(reqwest::Method::PATCH, &path)
            .header("content-type", "application/merge-patch+json")
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| self.call_failed(&e))?;
        match res.status().as_u16() {
            200 | 201 => {}
            404 => self.create(pool, &name, want).await?,
            s => {
                let text = res.text().await.unwrap_or_default();
                return Err(format!("scaling {name} to {want}: HTTP {s}: {text}"));
            }
        }
        self.replicas.insert(pool.clone(), want);
        Ok(())
    }

    async fn create(&self, pool: &Pool, name: &str, replicas: u32) -> Result<(), String> {
        let (model, account) = match pool {
            Pool::Cluster { account, model } => (model.as_str(), account.as_str()),
            Pool::Translators => {
                return Err("the translator Deployment is part of infra/k8s, not made here".into());
            }
        };
        let escape = |s: &str| {
            serde_json::to_string(s)
                .unwrap_or_default()
                .trim_matches('"')
                .to_string()
        };
        let manifest = DEPLOYMENT_TEMPLATE
            .replace("{name}", name)
            .replace("{namespace}", &escape(&self.namespace))
            .replace("{model}", &escape(model))
            .replace("{account}", &escape(account))
            .replace("{image}", &escape(&self.image))
            .replace("\"{replicas}\"", &replicas.to_string());
        // Checked here, so a broken template is our error, not the API server's.
        let manifest: serde_json::Value = serde_json::from_str(&manifest)
            .map_err(|e| format!("the Deployment template is not valid JSON: {e}"))?;
        let path = format!("/apis/apps/v1/namespaces/{}/deployments", self.namespace);
        let res = self
            .request(reqwest::Method::POST, &path)
            .json(&manifest)
            .send()
            .await
            .map_err(|e| self.call_failed(&e))?;
        match res.status().as_u16() {
            200..=202 => Ok(()),
            s => {
                let text = res.text().await.unwrap_or_default();
                Err(format!("creating {name}: HTTP {s}: {text}"))
            }
        }
    }
}
