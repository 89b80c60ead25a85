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
