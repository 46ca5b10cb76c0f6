//! The webhook's TLS: a CA and a serving certificate kept in a Secret of the webhook's own
//! namespace, so that several replicas serve the same certificate; the CA goes into the
//! `caBundle` of the webhook's MutatingWebhookConfiguration. The serving certificate is
//! renewed, with the same CA, when a third of its validity is left; the servers reload it
//! without a restart. With cert-manager, `--cert-dir` reads a mounted certificate instead
//! (its CA injector fills the caBundle).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow};
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType};

/// The PEM texts the server needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Certs {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    /// Seconds since the epoch.
    pub not_before: u64,
    pub not_after: u64,
}

pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn offset(secs: u64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(secs as i64).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

/// A new CA (10 years) as (certificate PEM, key PEM).
pub fn new_ca() -> anyhow::Result<(String, String)> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, "respmesh-webhook-ca");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params.not_before = offset(now() - 60);
    params.not_after = offset(now() + 10 * 365 * 24 * 3600);
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn ca_params() -> anyhow::Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, "respmesh-webhook-ca");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    Ok(params)
}

/// A serving certificate for `hosts` (DNS names or IPs), signed by the CA.
pub fn issue(ca_pem: &str, ca_key_pem: &str, hosts: &[String], validity: Duration) -> anyhow::Result<Certs> {
    let ca_key = KeyPair::from_pem(ca_key_pem)?;
    let issuer = Issuer::new(ca_params()?, ca_key);
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, hosts.first().map(String::as_str).unwrap_or("respmesh-webhook"));
    for h in hosts {
        params.subject_alt_names.push(match h.parse::<std::net::IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(h.clone().try_into()?),
        });
    }
    let (not_before, not_after) = (now().saturating_sub(60), now() + validity.as_secs());
    params.not_before = offset(not_before);
    params.not_after = offset(not_after);
    let cert = params.signed_by(&key, &issuer)?;
    Ok(Certs { ca_pem: ca_pem.to_owned(), cert_pem: cert.pem(), key_pem: key.serialize_pem(), not_before, not_after })
}

/// Whether a certificate should be renewed: a third (or less) of its validity is left.
pub fn due(c: &Certs, at: u64) -> bool {
    let life = c.not_after.saturating_sub(c.not_before);
    c.not_after.saturating_sub(at) <= life / 3
}

/// Keeps the certificates in a Secret; several replicas converge on one.
pub struct Store {
    pub secrets: Api<Secret>,
    pub name: String,
    pub hosts: Vec<String>,
    pub validity: Duration,
}

fn get(data: &BTreeMap<String, ByteString>, k: &str) -> Option<String> {
    data.get(k).map(|v| String::from_utf8_lossy(&v.0).into_owned())
}

impl Store {
    pub fn new(client: Client, namespace: &str, name: &str, hosts: Vec<String>, validity: Duration) -> Store {
        Store { secrets: Api::namespaced(client, namespace), name: name.to_owned(), hosts, validity }
    }

    /// The certificates to serve now: read from the Secret, created or renewed there when
    /// missing or due. A replica that loses a write race reads the winner's.
    pub async fn current(&self) -> anyhow::Result<Certs> {
        for _ in 0..5 {
            let existing = self.secrets.get_opt(&self.name).await.context("reading the certificate Secret")?;
            let Some(secret) = existing else {
                let (ca, ca_key) = new_ca()?;
                let certs = issue(&ca, &ca_key, &self.hosts, self.validity)?;
                let s = self.secret(None, &certs, &ca_key);
                match self.secrets.create(&PostParams::default(), &s).await {
                    Ok(_) => return Ok(certs),
                    Err(kube::Error::Api(e)) if e.code == 409 => continue,
                    Err(e) => return Err(e).context("creating the certificate Secret"),
                }
            };
            let data = secret.data.clone().unwrap_or_default();
            let parsed = (|| {
                Some((
                    Certs {
                        ca_pem: get(&data, "ca.crt")?,
                        cert_pem: get(&data, "tls.crt")?,
                        key_pem: get(&data, "tls.key")?,
                        not_before: get(&data, "not-before")?.parse().ok()?,
                        not_after: get(&data, "not-after")?.parse().ok()?,
                    },
                    get(&data, "ca.key")?,
                    get(&data, "hosts").unwrap_or_default(),
                ))
            })();
            let Some((certs, ca_key, hosts)) = parsed else {
                return Err(anyhow!("Secret {} does not hold a certificate set; delete it to start afresh", self.name));
            };
            if !due(&certs, now()) && hosts == self.hosts.join(",") {
                return Ok(certs);
            }
            let renewed = issue(&certs.ca_pem, &ca_key, &self.hosts, self.validity)?;
            let s = self.secret(secret.metadata.resource_version.clone(), &renewed, &ca_key);
            match self.secrets.replace(&self.name, &PostParams::default(), &s).await {
                Ok(_) => {
                    tracing::info!(not_after = renewed.not_after, "serving certificate renewed");
                    return Ok(renewed);
                }
                Err(kube::Error::Api(e)) if e.code == 409 => continue,
                Err(e) => return Err(e).context("renewing the certificate"),
            }
        }
        Err(anyhow!("the certificate Secret keeps changing under us"))
    }

    fn secret(&self, resource_version: Option<String>, c: &Certs, ca_key: &str) -> Secret {
        let entries = [
            ("ca.crt", c.ca_pem.clone()),
            ("ca.key", ca_key.to_owned()),
            ("tls.crt", c.cert_pem.clone()),
            ("tls.key", c.key_pem.clone()),
            ("not-before", c.not_before.to_string()),
            ("not-after", c.not_after.to_string()),
            ("hosts", self.hosts.join(",")),
        ];
        Secret {
            metadata: ObjectMeta { name: Some(self.name.clone()), resource_version, ..Default::default() },
            type_: Some("Opaque".into()),
            data: Some(entries.into_iter().map(|(k, v)| (k.to_owned(), ByteString(v.into_bytes()))).collect()),
            ..Default::default()
        }
    }
}

/// Sets the caBundle of every webhook of the configuration `name` to `ca_pem` (if different).
pub async fn ensure_ca_bundle(client: &Client, name: &str, ca_pem: &str) -> anyhow::Result<bool> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    for _ in 0..5 {
        let Some(mut mwc) = api.get_opt(name).await? else {
            return Err(anyhow!("MutatingWebhookConfiguration {name} not found"));
        };
        let bundle = ByteString(ca_pem.as_bytes().to_vec());
        let mut changed = false;
        for w in mwc.webhooks.iter_mut().flatten() {
            if w.client_config.ca_bundle.as_ref() != Some(&bundle) {
                w.client_config.ca_bundle = Some(bundle.clone());
                changed = true;
            }
        }
        if !changed {
            return Ok(false);
        }
        match api.replace(name, &PostParams::default(), &mwc).await {
            Ok(_) => return Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(anyhow!("MutatingWebhookConfiguration {name} keeps changing"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_due_with_a_third_of_the_validity_left() {
        let c = Certs {
            ca_pem: String::new(),
            cert_pem: String::new(),
            key_pem: String::new(),
            not_before: 0,
            not_after: 90,
        };
        assert!(!due(&c, 10));
        assert!(!due(&c, 59));
        assert!(due(&c, 60));
        assert!(due(&c, 100));
    }

    #[test]
    fn issued_certificates_carry_dns_and_ip_names() {
        let (ca, key) = new_ca().unwrap();
        let c = issue(
            &ca,
            &key,
            &["respmesh-webhook.respmesh-system.svc".into(), "127.0.0.1".into()],
            Duration::from_secs(3600),
        )
        .unwrap();
        assert!(c.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert_eq!(c.not_after - c.not_before, 3660);
    }
}
