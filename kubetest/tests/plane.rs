//! The local control plane itself: it serves, kubectl works with it, the CRDs are installed,
//! and identities from `kubeconfig_for` are subject to RBAC.

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;

#[tokio::test]
async fn the_plane_serves_kubectl_crds_and_rbac() {
    let plane = respmesh_kubetest::shared();
    let out = plane.kubectl(&["api-resources", "--api-group=redis.respmesh.io", "-o", "name"], None).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("redisservices.redis.respmesh.io"), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("redisdestinations.redis.respmesh.io"), "{text}");
    let out = plane.kubectl(&["api-resources", "--api-group=redis.aeraki.io", "-o", "name"], None).unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("redisservices.redis.aeraki.io"));

    let client = plane.client().await.unwrap();
    let ns = plane.namespace(&client, "plane", &[]).await.unwrap();
    // A user without any binding is refused: RBAC is on.
    let nobody = respmesh_kubetest::client_from(&plane.kubeconfig_for("nobody", &[]).unwrap()).await.unwrap();
    let err = Api::<ConfigMap>::namespaced(nobody, &ns).list(&Default::default()).await.unwrap_err();
    assert!(matches!(err, kube::Error::Api(ref s) if s.code == 403), "{err}");
}
