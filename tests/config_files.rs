//! The shipped example configuration stays in step with the config schema.

mod common;

use rulegate::config::ServeConfig;

#[test]
fn the_example_config_parses() {
    let config =
        ServeConfig::from_file(&common::repo().join("deploy/rulegate.yaml")).expect("deploy/rulegate.yaml is valid");
    assert_eq!(config.listen.as_deref(), Some("127.0.0.1:8080"));
    assert!(config.policy.as_ref().is_some_and(|p| p.is_file()), "its policy path resolves relative to the file");
    assert!(config.model.as_ref().is_some_and(|m| m.join("manifest.json").is_file()));
}

/// The configs baked into the image and shipped in the Kubernetes packaging use only fields the
/// schema knows (unknown fields are rejected), and the shared-pool one selects the remote
/// backend with a usable URL.
#[test]
fn the_container_and_kubernetes_configs_parse() {
    use rulegate::classifier::Backend;
    for file in [
        "deploy/container/rulegate.yaml",
        "deploy/kubernetes/base/rulegate.yaml",
        "deploy/kubernetes/remote-classifier/rulegate.yaml",
    ] {
        let config = ServeConfig::from_file(&common::repo().join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        let remote = file.contains("remote-classifier");
        // `resolve` checks the classifier section without loading a policy or model file.
        let flags = ServeConfig {
            upstream: rulegate::config::UpstreamConfig {
                url: Some("http://127.0.0.1:8000".into()),
                ..Default::default()
            },
            policy: Some(common::default_policy()),
            admin: rulegate::config::AdminConfig {
                token_file: None,
                token_env: Some("RULEGATE_TEST_NO_TOKEN".into()),
                ..Default::default()
            },
            ..ServeConfig::default()
        };
        let mut config = config;
        config.admin.token_file = None;
        let resolved = config.overridden_by(flags).resolve().unwrap_or_else(|e| panic!("{file}: {e}"));
        match (&resolved.backend, remote) {
            (Backend::Remote(options), true) => assert!(options.url.starts_with("http://"), "{file}"),
            (Backend::Local, false) => {}
            (other, _) => panic!("{file}: unexpected backend {other:?}"),
        }
    }
}
