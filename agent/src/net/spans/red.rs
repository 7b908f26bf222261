//! RED metrics (rate, errors, duration) from finished spans, as Prometheus histograms in the
//! agent's registry:
//!
//! - `http_server_request_duration_seconds{service_name, http_request_method, http_route,
//!   http_response_status_code}`
//! - `http_client_request_duration_seconds{service_name, http_request_method, server_address,
//!   http_response_status_code}`
//! - `db_client_operation_duration_seconds{service_name, db_system_name, db_operation_name,
//!   error_type}` (`error_type` is the MySQL error number or Redis error prefix, empty when OK)
//!
//! Label values are bounded: at most `max_services` services, `max_routes` routes (and server
//! addresses) per service, [`MAX_OPERATIONS`] operations and [`MAX_ERROR_TYPES`] error types per
//! database system; values past a cap become [`OVERFLOW`]. Each family also stops at
//! [`MAX_SERIES`] series, past which every label is [`OVERFLOW`].

use foldhash::{HashMap, HashMapExt, HashSet};

use loupe_collector::telemetry::{DEFAULT_SECONDS_BUCKETS, Histogram, Registry};

/// The label value standing for "too many distinct values".
pub const OVERFLOW: &str = "__overflow__";
/// Distinct operations kept per database system.
pub const MAX_OPERATIONS: usize = 64;
/// Distinct error types kept per database system.
pub const MAX_ERROR_TYPES: usize = 32;
/// Series per histogram family at most.
pub const MAX_SERIES: usize = 4096;

/// A bounded set of label values: new values are admitted until the cap.
#[derive(Debug, Default)]
struct Admitted {
    values: HashSet<String>,
}

impl Admitted {
    fn admit<'a>(&mut self, value: &'a str, cap: usize) -> &'a str {
        if self.values.contains(value) {
            return value;
        }
        if self.values.len() >= cap {
            return OVERFLOW;
        }
        self.values.insert(value.to_owned());
        value
    }
}

#[derive(Debug)]
struct Family {
    name: &'static str,
    help: &'static str,
    keys: [&'static str; 4],
    /// Series by their four label values, each prefixed with its length (see [`series_key`]),
    /// so that a lookup needs no allocation.
    series: HashMap<String, Histogram>,
    scratch: String,
}

impl Family {
    fn new(name: &'static str, help: &'static str, keys: [&'static str; 4]) -> Self {
        Self {
            name,
            help,
            keys,
            series: HashMap::new(),
            scratch: String::new(),
        }
    }

    fn observe(&mut self, registry: &Registry, values: [&str; 4], seconds: f64) {
        series_key(&mut self.scratch, values);
        if let Some(h) = self.series.get(self.scratch.as_str()) {
            h.observe(seconds);
            return;
        }
        let mut values = values;
        if self.series.len() >= MAX_SERIES {
            values = [OVERFLOW; 4];
            series_key(&mut self.scratch, values);
        }
        let h = self.series.entry(self.scratch.clone()).or_insert_with(|| {
            let labels: Vec<(&str, &str)> = self.keys.iter().copied().zip(values).collect();
            registry.histogram(self.name, self.help, &labels, DEFAULT_SECONDS_BUCKETS)
        });
        h.observe(seconds);
    }
}

/// Writes the key of a series into `out`: each value as `<length>:<value>`, which no two
/// different value lists share.
fn series_key(out: &mut String, values: [&str; 4]) {
    out.clear();
    for v in values {
        out.push_str(super::attrs::Decimal::new(v.len() as u64).as_str());
        out.push(':');
        out.push_str(v);
    }
}

/// `value` admitted among the values of `owner` (a service), whose set is made on first use:
/// looked up before inserting, so that a known owner costs no allocation.
fn admit_for<'a>(
    map: &mut HashMap<String, Admitted>,
    owner: &str,
    value: &'a str,
    cap: usize,
) -> &'a str {
    if let Some(admitted) = map.get_mut(owner) {
        return admitted.admit(value, cap);
    }
    map.entry(owner.to_owned()).or_default().admit(value, cap)
}

/// The RED histograms and their label caps.
#[derive(Debug)]
pub struct RedMetrics {
    registry: Registry,
    max_services: usize,
    max_routes: usize,
    services: Admitted,
    routes: HashMap<String, Admitted>,
    peers: HashMap<String, Admitted>,
    operations: HashMap<&'static str, Admitted>,
    errors: HashMap<&'static str, Admitted>,
    rpc_services: HashMap<String, Admitted>,
    rpc_methods: HashMap<String, Admitted>,
    http_server: Family,
    http_client: Family,
    db_client: Family,
    rpc_server: Family,
    rpc_client: Family,
}

impl RedMetrics {
    pub fn new(registry: &Registry, max_services: usize, max_routes: usize) -> Self {
        Self {
            registry: registry.clone(),
            max_services: max_services.max(1),
            max_routes: max_routes.max(1),
            services: Admitted::default(),
            routes: HashMap::new(),
            peers: HashMap::new(),
            operations: HashMap::new(),
            errors: HashMap::new(),
            rpc_services: HashMap::new(),
            rpc_methods: HashMap::new(),
            http_server: Family::new(
                "http_server_request_duration_seconds",
                "Duration of HTTP server requests observed by Loupe.",
                [
                    "service_name",
                    "http_request_method",
                    "http_route",
                    "http_response_status_code",
                ],
            ),
            http_client: Family::new(
                "http_client_request_duration_seconds",
                "Duration of HTTP client requests observed by Loupe.",
                [
                    "service_name",
                    "http_request_method",
                    "server_address",
                    "http_response_status_code",
                ],
            ),
            db_client: Family::new(
                "db_client_operation_duration_seconds",
                "Duration of database client operations observed by Loupe.",
                [
                    "service_name",
                    "db_system_name",
                    "db_operation_name",
                    "error_type",
                ],
            ),
            rpc_server: Family::new(
                "rpc_server_duration_seconds",
                "Duration of RPCs (gRPC) served, observed by Loupe.",
                [
                    "service_name",
                    "rpc_service",
                    "rpc_method",
                    "rpc_grpc_status_code",
                ],
            ),
            rpc_client: Family::new(
                "rpc_client_duration_seconds",
                "Duration of RPCs (gRPC) made, observed by Loupe.",
                [
                    "service_name",
                    "rpc_service",
                    "rpc_method",
                    "rpc_grpc_status_code",
                ],
            ),
        }
    }

    fn service<'a>(&mut self, service: &'a str) -> &'a str {
        self.services.admit(service, self.max_services)
    }

    pub fn http_server(
        &mut self,
        service: &str,
        method: &str,
        route: &str,
        status: &str,
        seconds: f64,
    ) {
        let service = self.service(service);
        let route = admit_for(&mut self.routes, service, route, self.max_routes);
        self.http_server
            .observe(&self.registry, [service, method, route, status], seconds);
    }

    pub fn http_client(
        &mut self,
        service: &str,
        method: &str,
        peer: &str,
        status: &str,
        seconds: f64,
    ) {
        let service = self.service(service);
        let peer = admit_for(&mut self.peers, service, peer, self.max_routes);
        self.http_client
            .observe(&self.registry, [service, method, peer, status], seconds);
    }

    /// A gRPC call, served (`server`) or made; `status` is the gRPC status code, empty when
    /// unknown. RPC services and methods are capped per service like routes.
    pub fn rpc(
        &mut self,
        server: bool,
        service: &str,
        rpc_service: &str,
        method: &str,
        status: &str,
        seconds: f64,
    ) {
        let service = self.service(service);
        let rpc_service = admit_for(
            &mut self.rpc_services,
            service,
            rpc_service,
            self.max_routes,
        );
        let method = admit_for(&mut self.rpc_methods, service, method, self.max_routes);
        let family = if server {
            &mut self.rpc_server
        } else {
            &mut self.rpc_client
        };
        family.observe(
            &self.registry,
            [service, rpc_service, method, status],
            seconds,
        );
    }

    pub fn db_client(
        &mut self,
        service: &str,
        system: &'static str,
        operation: &str,
        error: &str,
        seconds: f64,
    ) {
        let service = self.service(service);
        let operation = self
            .operations
            .entry(system)
            .or_default()
            .admit(operation, MAX_OPERATIONS);
        let error = if error.is_empty() {
            ""
        } else {
            self.errors
                .entry(system)
                .or_default()
                .admit(error, MAX_ERROR_TYPES)
        };
        self.db_client
            .observe(&self.registry, [service, system, operation, error], seconds);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_keys_prefix_each_value_with_its_length() {
        let mut key = String::new();
        let long = "x".repeat(123);
        series_key(&mut key, ["", "abcdefghi", "abcdefghij", &long]);
        assert_eq!(key, format!("0:9:abcdefghi10:abcdefghij123:{long}"));
    }

    #[test]
    fn routes_are_capped_per_service() {
        let r = Registry::new();
        let mut red = RedMetrics::new(&r, 10, 3);
        for i in 0..10 {
            red.http_server("a", "GET", &format!("/r{i}"), "200", 0.01);
        }
        red.http_server("b", "GET", "/x", "200", 0.01);
        let text = r.render();
        assert!(text.contains("http_route=\"/r2\""), "{text}");
        assert!(!text.contains("http_route=\"/r3\""), "{text}");
        assert!(text.contains(
            "http_server_request_duration_seconds_count{http_request_method=\"GET\",http_response_status_code=\"200\",http_route=\"__overflow__\",service_name=\"a\"} 7\n"
        ), "{text}");
        assert!(
            text.contains("http_route=\"/x\",service_name=\"b\""),
            "{text}"
        );
    }

    #[test]
    fn services_operations_and_errors_are_capped() {
        let r = Registry::new();
        let mut red = RedMetrics::new(&r, 1, 100);
        red.db_client("a", "mysql", "SELECT", "", 0.001);
        red.db_client("b", "mysql", "SELECT", "1064", 0.001);
        for i in 0..(MAX_OPERATIONS + 5) {
            red.db_client("a", "redis", &format!("CMD{i}"), "", 0.001);
        }
        let text = r.render();
        assert!(text.contains("db_operation_name=\"SELECT\",db_system_name=\"mysql\",error_type=\"1064\",service_name=\"__overflow__\""), "{text}");
        assert!(text.contains(
            "db_client_operation_duration_seconds_count{db_operation_name=\"__overflow__\",db_system_name=\"redis\",error_type=\"\",service_name=\"a\"} 5\n"
        ), "{text}");
    }
}
