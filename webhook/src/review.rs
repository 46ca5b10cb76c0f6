//! AdmissionReview in, AdmissionReview out, on raw JSON. Whatever arrives, the answer is an
//! AdmissionReview: a malformed review gets one with an error, never an HTTP 500 or a panic.

use base64::Engine;
use serde_json::{Value, json};

use crate::inject::{self, Decision, InjectConfig, pointer_escape};

/// What the webhook did, for logs and metrics.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    Injected { namespace: String, pod: String },
    Skipped { namespace: String, pod: String, reason: String },
    Refused { message: String },
    Malformed { message: String },
}

/// The pod's namespace and name (or generateName) from a review, for the ConfigMap lookup
/// that comes before [`answer`].
pub fn namespace_of(review: &Value) -> Option<String> {
    let req = review.get("request")?;
    req.get("namespace")
        .and_then(Value::as_str)
        .or_else(|| req.pointer("/object/metadata/namespace").and_then(Value::as_str))
        .map(str::to_owned)
}

fn reply(uid: &str, response: Value) -> Value {
    let mut response = response;
    response["uid"] = json!(uid);
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response})
}

/// Answers one review. `ports` are the capture ports known for the pod's namespace.
pub fn answer(body: &[u8], cfg: &InjectConfig, ports: &[u16]) -> (Value, Outcome) {
    let review: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return malformed("", format!("the body is not JSON: {e}")),
    };
    let Some(req) = review.get("request") else { return malformed("", "the review has no request".into()) };
    let uid = req.get("uid").and_then(Value::as_str).unwrap_or_default().to_owned();
    if uid.is_empty() {
        return malformed("", "the request has no uid".into());
    }
    if review.get("apiVersion").and_then(Value::as_str) != Some("admission.k8s.io/v1") {
        return malformed(&uid, "only admission.k8s.io/v1 AdmissionReview is supported".into());
    }
    let kind = req.pointer("/kind/kind").and_then(Value::as_str).unwrap_or_default();
    let operation = req.get("operation").and_then(Value::as_str).unwrap_or_default();
    let Some(pod) = req.get("object").filter(|o| o.is_object()) else {
        return malformed(&uid, "the request has no object".into());
    };
    let namespace = namespace_of(&review).unwrap_or_default();
    let name = pod
        .pointer("/metadata/name")
        .or_else(|| pod.pointer("/metadata/generateName"))
        .and_then(Value::as_str)
        .unwrap_or("<unnamed>")
        .to_owned();
    if kind != "Pod" || operation != "CREATE" {
        let reason = format!("only pod creation is handled (got {operation} of {kind})");
        return (reply(&uid, json!({"allowed": true})), Outcome::Skipped { namespace, pod: name, reason });
    }
    match inject::decide(pod, &namespace, cfg, ports) {
        Ok(Decision::Patch(ops)) => {
            let patch = base64::engine::general_purpose::STANDARD.encode(Value::Array(ops).to_string());
            (
                reply(&uid, json!({"allowed": true, "patchType": "JSONPatch", "patch": patch})),
                Outcome::Injected { namespace, pod: name },
            )
        }
        Ok(Decision::Skip(reason)) => {
            // Say why on the pod when that changes nothing else (an injected pod stays as is).
            let response = if reason == "already injected" {
                json!({"allowed": true})
            } else {
                let op = if pod.pointer("/metadata/annotations").and_then(Value::as_object).is_some() {
                    json!({"op": "add", "path": format!("/metadata/annotations/{}", pointer_escape(inject::SKIP_ANNOTATION)), "value": reason})
                } else {
                    json!({"op": "add", "path": "/metadata/annotations", "value": {inject::SKIP_ANNOTATION: reason}})
                };
                let patch = base64::engine::general_purpose::STANDARD.encode(json!([op]).to_string());
                json!({"allowed": true, "patchType": "JSONPatch", "patch": patch})
            };
            (reply(&uid, response), Outcome::Skipped { namespace, pod: name, reason })
        }
        Err(e) => {
            let message = format!("respmesh: {e}");
            (
                reply(
                    &uid,
                    json!({"allowed": false, "status": {"code": 400, "reason": "BadRequest", "message": message}}),
                ),
                Outcome::Refused { message },
            )
        }
    }
}

fn malformed(uid: &str, message: String) -> (Value, Outcome) {
    let message = format!("respmesh: malformed AdmissionReview: {message}");
    (
        reply(uid, json!({"allowed": false, "status": {"code": 400, "reason": "BadRequest", "message": message}})),
        Outcome::Malformed { message },
    )
}
