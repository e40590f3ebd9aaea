//! A small OpenAPI 3.0 checker, enough for E2B's specs: find the operation a
//! request is for, check its security header, query and path parameters and JSON
//! body against the spec's schemas, and make sample responses from them.
//!
//! The fake server uses it to refuse (400) what the real API would refuse, and the
//! tests use it to prove that every request the client sends is one the spec
//! allows. It reads the vendored spec files themselves (`tests/specs/e2b/`), so a
//! spec update is checked without touching code.
//!
//! Schema keywords covered: `$ref` (siblings ignored, as OpenAPI 3.0 says), `type`,
//! `nullable`, `format` (`int32`/`int64` ranges, `date-time` shape), `enum`,
//! `required`, `properties`, `additionalProperties`, `items`, `minimum`,
//! `maximum`, `minLength`, `maxLength`, `minItems`, `maxItems`, `allOf`, `anyOf`,
//! `oneOf`. Any other keyword is reported as an error, never silently passed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use serde_json::{Map, Value, json};

/// Keywords that annotate but do not constrain.
const ANNOTATIONS: &[&str] = &[
    "description",
    "default",
    "deprecated",
    "example",
    "examples",
    "title",
    "readOnly",
    "writeOnly",
    "nullable",
    "format",
    "x-go-type",
];

/// A parsed spec document.
#[derive(Debug)]
pub struct OpenApi {
    doc: Value,
    file: PathBuf,
}

/// One operation of the spec, found for a request.
#[derive(Debug, Clone, Copy)]
pub struct Operation<'a> {
    pub method: &'a str,
    /// The path template, e.g. `/sandboxes/{sandboxID}`.
    pub template: &'a str,
    pub path_item: &'a Value,
    pub op: &'a Value,
}

/// The parts of an HTTP request the checker looks at.
#[derive(Debug, Clone, Copy)]
pub struct RequestParts<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    /// Header names in any case.
    pub headers: &'a [(String, String)],
    pub body: &'a [u8],
}

impl RequestParts<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Which properties a generated sample has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fill {
    /// Every property, nullable ones with a value.
    All,
    /// Required properties only.
    Required,
    /// Every property, nullable ones `null`.
    Nulls,
}

/// The directory holding the vendored specs.
pub fn specs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("specs/e2b")
}

impl OpenApi {
    pub fn load(file: impl AsRef<Path>) -> anyhow::Result<OpenApi> {
        let file = file.as_ref().to_path_buf();
        let text = std::fs::read_to_string(&file)?;
        let doc: Value = serde_yaml_ng::from_str(&text)?;
        anyhow::ensure!(
            doc.get("openapi")
                .and_then(Value::as_str)
                .is_some_and(|v| v.starts_with("3.0")),
            "{} is not an OpenAPI 3.0 document",
            file.display()
        );
        Ok(OpenApi { doc, file })
    }

    /// The vendored control-plane spec (`openapi.yml`), parsed once.
    pub fn e2b() -> Arc<OpenApi> {
        static SPEC: OnceLock<Arc<OpenApi>> = OnceLock::new();
        SPEC.get_or_init(|| {
            Arc::new(OpenApi::load(specs_dir().join("openapi.yml")).expect("vendored openapi.yml"))
        })
        .clone()
    }

    /// The vendored envd spec (`envd.yaml`), parsed once.
    pub fn envd() -> Arc<OpenApi> {
        static SPEC: OnceLock<Arc<OpenApi>> = OnceLock::new();
        SPEC.get_or_init(|| {
            Arc::new(OpenApi::load(specs_dir().join("envd.yaml")).expect("vendored envd.yaml"))
        })
        .clone()
    }

    pub fn file(&self) -> &Path {
        &self.file
    }

    pub fn doc(&self) -> &Value {
        &self.doc
    }

    /// `components/schemas/<name>`.
    pub fn schema(&self, name: &str) -> &Value {
        self.doc
            .pointer(&format!("/components/schemas/{name}"))
            .unwrap_or_else(|| panic!("no schema {name} in {}", self.file.display()))
    }

    /// Follow `$ref`s (local ones only: E2B's specs have no others).
    pub fn resolve<'a>(&'a self, mut v: &'a Value) -> &'a Value {
        for _ in 0..32 {
            match v.get("$ref").and_then(Value::as_str) {
                Some(r) => {
                    let pointer = r
                        .strip_prefix('#')
                        .unwrap_or_else(|| panic!("non-local $ref {r}"));
                    v = self
                        .doc
                        .pointer(pointer)
                        .unwrap_or_else(|| panic!("dangling $ref {r} in {}", self.file.display()));
                }
                None => return v,
            }
        }
        panic!("$ref chain too long")
    }

    /// The operation for `method` and a concrete `path` (no query). A template
    /// with more literal segments wins (`/sandboxes/metrics` over `/sandboxes/{id}`).
    pub fn operation<'a>(&'a self, method: &str, path: &str) -> Option<Operation<'a>> {
        let method = method.to_ascii_lowercase();
        let segs: Vec<&str> = path.trim_end_matches('/').split('/').collect();
        let mut best: Option<(usize, Operation<'a>)> = None;
        for (template, item) in self.doc.get("paths")?.as_object()? {
            let tsegs: Vec<&str> = template.trim_end_matches('/').split('/').collect();
            if tsegs.len() != segs.len() {
                continue;
            }
            let mut literals = 0;
            let matches = tsegs.iter().zip(&segs).all(|(t, s)| {
                if t.starts_with('{') && t.ends_with('}') {
                    !s.is_empty()
                } else {
                    literals += 1;
                    t == s
                }
            });
            if !matches {
                continue;
            }
            let Some((m, op)) = item
                .as_object()
                .and_then(|o| o.get_key_value(method.as_str()))
            else {
                continue;
            };
            if best.as_ref().is_none_or(|(l, _)| literals > *l) {
                best = Some((
                    literals,
                    Operation {
                        method: m.as_str(),
                        template: template.as_str(),
                        path_item: item,
                        op,
                    },
                ));
            }
        }
        best.map(|(_, op)| op)
    }

    /// Check a request against its operation. Errors name what is wrong.
    pub fn check_request(&self, req: &RequestParts<'_>) -> Result<(), Vec<String>> {
        let Some(op) = self.operation(req.method, req.path) else {
            return Err(vec![format!(
                "{} {}: no such operation in {}",
                req.method,
                req.path,
                self.file.display()
            )]);
        };
        let mut errors = Vec::new();
        self.check_security(op, req, &mut errors);
        self.check_parameters(op, req, &mut errors);
        self.check_body(op, req, &mut errors);
        let label = format!("{} {}", req.method, op.template);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors
                .into_iter()
                .map(|e| format!("{label}: {e}"))
                .collect())
        }
    }

    fn check_security(&self, op: Operation<'_>, req: &RequestParts<'_>, errors: &mut Vec<String>) {
        let Some(alternatives) = op
            .op
            .get("security")
            .or(self.doc.get("security"))
            .and_then(Value::as_array)
        else {
            return;
        };
        let satisfied = |requirement: &Value| {
            requirement.as_object().is_some_and(|schemes| {
                schemes.keys().all(|name| {
                    let scheme = self
                        .doc
                        .pointer(&format!("/components/securitySchemes/{name}"))
                        .map(|s| self.resolve(s));
                    match scheme {
                        Some(s) if s["type"] == "apiKey" && s["in"] == "header" => s["name"]
                            .as_str()
                            .and_then(|h| req.header(h))
                            .is_some_and(|v| !v.is_empty()),
                        Some(s) if s["type"] == "http" && s["scheme"] == "bearer" => req
                            .header("authorization")
                            .is_some_and(|v| v.starts_with("Bearer ")),
                        _ => false,
                    }
                })
            })
        };
        if !alternatives.iter().any(satisfied) {
            errors.push("no security requirement is met (missing credentials header)".into());
        }
    }

    fn parameters<'a>(&'a self, op: Operation<'a>) -> Vec<&'a Value> {
        let mut params: Vec<&Value> = Vec::new();
        for list in [op.path_item.get("parameters"), op.op.get("parameters")]
            .into_iter()
            .flatten()
        {
            for p in list.as_array().into_iter().flatten() {
                let p = self.resolve(p);
                // An operation-level parameter overrides a path-level one of the same name.
                params.retain(|q| !(q["name"] == p["name"] && q["in"] == p["in"]));
                params.push(p);
            }
        }
        params
    }

    fn check_parameters(
        &self,
        op: Operation<'_>,
        req: &RequestParts<'_>,
        errors: &mut Vec<String>,
    ) {
        let params = self.parameters(op);
        let query: Vec<(String, String)> =
            form_urlencoded::parse(req.query.unwrap_or("").as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
        for (name, _) in &query {
            if !params
                .iter()
                .any(|p| p["in"] == "query" && p["name"] == name.as_str())
            {
                errors.push(format!("query parameter {name:?} is not in the spec"));
            }
        }
        let segs: Vec<&str> = req.path.trim_end_matches('/').split('/').collect();
        let tsegs: Vec<&str> = op.template.trim_end_matches('/').split('/').collect();
        for p in params {
            let name = p["name"].as_str().unwrap_or_default();
            let schema = p
                .get("schema")
                .map(|s| self.resolve(s))
                .cloned()
                .unwrap_or(json!({}));
            let required = p["required"].as_bool().unwrap_or(false);
            let values: Vec<String> = match p["in"].as_str() {
                Some("query") => query
                    .iter()
                    .filter(|(k, _)| k == name)
                    .map(|(_, v)| v.clone())
                    .collect(),
                Some("path") => tsegs
                    .iter()
                    .zip(&segs)
                    .filter(|(t, _)| **t == format!("{{{name}}}"))
                    .map(|(_, s)| s.to_string())
                    .collect(),
                Some("header") => req.header(name).map(str::to_string).into_iter().collect(),
                _ => continue,
            };
            if values.is_empty() {
                if required {
                    errors.push(format!("required {} parameter {name:?} missing", p["in"]));
                }
                continue;
            }
            if values.len() > 1 {
                errors.push(format!("parameter {name:?} given {} times", values.len()));
            }
            let instance = param_instance(&schema, p, &values[0]);
            for e in self.validate(&schema, &instance) {
                errors.push(format!("parameter {name:?}: {e}"));
            }
        }
    }

    fn check_body(&self, op: Operation<'_>, req: &RequestParts<'_>, errors: &mut Vec<String>) {
        let Some(rb) = op.op.get("requestBody").map(|b| self.resolve(b)) else {
            if !req.body.is_empty() {
                errors.push("a body was sent, but the operation takes none".into());
            }
            return;
        };
        if req.body.is_empty() {
            if rb["required"].as_bool().unwrap_or(false) {
                errors.push("the request body is required".into());
            }
            return;
        }
        let content_type = req
            .header("content-type")
            .map(|v| {
                v.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase()
            })
            .unwrap_or_default();
        let Some(media) = rb.get("content").and_then(|c| c.get(content_type.as_str())) else {
            errors.push(format!(
                "content type {content_type:?} is not one the spec accepts"
            ));
            return;
        };
        if content_type.ends_with("json") {
            match serde_json::from_slice::<Value>(req.body) {
                Ok(v) => {
                    let schema = media.get("schema").cloned().unwrap_or(json!({}));
                    for e in self.validate(&schema, &v) {
                        errors.push(format!("body: {e}"));
                    }
                }
                Err(e) => errors.push(format!("body is not JSON: {e}")),
            }
        }
    }

    /// The schema of a response: `(status, content type) -> schema`; `None` when
    /// the spec has no such response, `Some(None)` when it has one without a body.
    pub fn response_schema<'a>(
        &'a self,
        op: Operation<'a>,
        status: u16,
    ) -> Option<Option<(&'a str, &'a Value)>> {
        let responses = op.op.get("responses")?;
        let r = responses
            .get(status.to_string())
            .or_else(|| responses.get(format!("{}XX", status / 100)))
            .or_else(|| responses.get("default"))?;
        let r = self.resolve(r);
        Some(r.get("content").and_then(Value::as_object).and_then(|c| {
            c.iter()
                .next()
                .map(|(ct, m)| (ct.as_str(), m.get("schema").unwrap_or(&Value::Null)))
        }))
    }

    /// Check a response against the spec: the status is documented, and a JSON
    /// body matches its schema.
    pub fn check_response(
        &self,
        method: &str,
        path: &str,
        status: u16,
        body: &[u8],
    ) -> Result<(), Vec<String>> {
        let Some(op) = self.operation(method, path) else {
            return Err(vec![format!("{method} {path}: no such operation")]);
        };
        let label = format!("{method} {} -> {status}", op.template);
        match self.response_schema(op, status) {
            None => Err(vec![format!("{label}: status not in the spec")]),
            Some(None) if body.is_empty() => Ok(()),
            Some(None) => Err(vec![format!(
                "{label}: the spec defines no body, one was sent"
            )]),
            Some(Some((ct, schema))) if ct.ends_with("json") => {
                let v: Value = serde_json::from_slice(body)
                    .map_err(|e| vec![format!("{label}: not JSON: {e}")])?;
                let errors = self.validate(schema, &v);
                if errors.is_empty() {
                    Ok(())
                } else {
                    Err(errors
                        .into_iter()
                        .map(|e| format!("{label}: {e}"))
                        .collect())
                }
            }
            Some(Some(_)) => Ok(()),
        }
    }

    /// Errors of `instance` against `schema`, each with a JSON pointer.
    pub fn validate(&self, schema: &Value, instance: &Value) -> Vec<String> {
        let mut errors = Vec::new();
        self.validate_at(schema, instance, "", &mut errors);
        errors
    }

    fn validate_at(&self, schema: &Value, instance: &Value, at: &str, errors: &mut Vec<String>) {
        let schema = self.resolve(schema);
        let Some(obj) = schema.as_object() else {
            if schema == &Value::Bool(false) {
                errors.push(format!("{at}: no value is allowed here"));
            }
            return;
        };
        if obj.is_empty() {
            return;
        }
        if instance.is_null() {
            if obj.get("nullable") != Some(&Value::Bool(true)) {
                errors.push(format!("{at}: null is not allowed (not nullable)"));
            }
            return;
        }
        let here = |e: String| format!("{}: {e}", if at.is_empty() { "/" } else { at });
        for (k, v) in obj {
            match k.as_str() {
                "type" => {
                    let t = v.as_str().unwrap_or_default();
                    let ok = match t {
                        "object" => instance.is_object(),
                        "array" => instance.is_array(),
                        "string" => instance.is_string(),
                        "boolean" => instance.is_boolean(),
                        "number" => instance.is_number(),
                        "integer" => {
                            instance.is_i64()
                                || instance.is_u64()
                                || instance.as_f64().is_some_and(|f| f.fract() == 0.0)
                        }
                        other => {
                            errors.push(here(format!("unsupported type {other:?}")));
                            true
                        }
                    };
                    if !ok {
                        errors.push(here(format!("expected {t}, got {instance}")));
                    } else if let Some(f) = obj.get("format").and_then(Value::as_str) {
                        check_format(f, instance)
                            .map_err(|e| errors.push(here(e)))
                            .ok();
                    }
                }
                "enum" => {
                    if !v.as_array().is_some_and(|a| a.contains(instance)) {
                        errors.push(here(format!("{instance} is not one of {v}")));
                    }
                }
                "required" => {
                    if let Some(o) = instance.as_object() {
                        for r in v.as_array().into_iter().flatten().filter_map(Value::as_str) {
                            if !o.contains_key(r) {
                                errors.push(here(format!("required property {r:?} missing")));
                            }
                        }
                    }
                }
                "properties" => {
                    if let (Some(o), Some(props)) = (instance.as_object(), v.as_object()) {
                        for (name, sub) in props {
                            if let Some(val) = o.get(name) {
                                self.validate_at(sub, val, &format!("{at}/{name}"), errors);
                            }
                        }
                    }
                }
                "additionalProperties" => {
                    if let Some(o) = instance.as_object() {
                        let known = obj.get("properties").and_then(Value::as_object);
                        for (name, val) in o {
                            if known.is_some_and(|p| p.contains_key(name)) {
                                continue;
                            }
                            match v {
                                Value::Bool(false) => {
                                    errors.push(here(format!("property {name:?} is not allowed")))
                                }
                                Value::Bool(true) => {}
                                sub => self.validate_at(sub, val, &format!("{at}/{name}"), errors),
                            }
                        }
                    }
                }
                "items" => {
                    if let Some(a) = instance.as_array() {
                        for (i, item) in a.iter().enumerate() {
                            self.validate_at(v, item, &format!("{at}/{i}"), errors);
                        }
                    }
                }
                "minimum" | "maximum" => {
                    if let (Some(x), Some(bound)) = (instance.as_f64(), v.as_f64()) {
                        let bad = if k == "minimum" { x < bound } else { x > bound };
                        if bad {
                            errors.push(here(format!("{x} is beyond {k} {bound}")));
                        }
                    }
                }
                "minLength" | "maxLength" => {
                    if let (Some(s), Some(bound)) = (instance.as_str(), v.as_u64()) {
                        let n = s.chars().count() as u64;
                        if (k == "minLength" && n < bound) || (k == "maxLength" && n > bound) {
                            errors.push(here(format!("length {n} is beyond {k} {bound}")));
                        }
                    }
                }
                "minItems" | "maxItems" => {
                    if let (Some(a), Some(bound)) = (instance.as_array(), v.as_u64()) {
                        let n = a.len() as u64;
                        if (k == "minItems" && n < bound) || (k == "maxItems" && n > bound) {
                            errors.push(here(format!("{n} items is beyond {k} {bound}")));
                        }
                    }
                }
                "allOf" | "anyOf" | "oneOf" => {
                    let subs = v.as_array().cloned().unwrap_or_default();
                    let passing = subs
                        .iter()
                        .filter(|s| self.validate(s, instance).is_empty())
                        .count();
                    let ok = match k.as_str() {
                        "allOf" => passing == subs.len(),
                        "anyOf" => passing >= 1,
                        _ => passing == 1,
                    };
                    if !ok {
                        errors.push(here(format!(
                            "{k}: {passing} of {} subschemas match",
                            subs.len()
                        )));
                    }
                }
                k if ANNOTATIONS.contains(&k) || k.starts_with("x-") => {}
                other => errors.push(here(format!(
                    "schema keyword {other:?} is not supported by this checker"
                ))),
            }
        }
    }

    /// Sample instances of `schema`: all properties filled, only required ones,
    /// nullable ones `null`, and one per value of the largest `enum` it holds. Each
    /// is valid against the schema (the tests check that too).
    pub fn samples(&self, schema: &Value) -> Vec<Value> {
        let variants = self.enum_width(schema, &mut BTreeSet::new()).max(1);
        let mut out: Vec<Value> = Vec::new();
        for variant in 0..variants {
            out.push(self.sample(schema, Fill::All, variant, 0));
        }
        out.push(self.sample(schema, Fill::Required, 0, 0));
        out.push(self.sample(schema, Fill::Nulls, 0, 0));
        let mut unique = Vec::new();
        for v in out {
            if !unique.contains(&v) {
                unique.push(v);
            }
        }
        unique
    }

    fn enum_width(&self, schema: &Value, seen: &mut BTreeSet<String>) -> usize {
        if let Some(r) = schema.get("$ref").and_then(Value::as_str)
            && !seen.insert(r.to_string())
        {
            return 0;
        }
        let s = self.resolve(schema);
        let mut n = s.get("enum").and_then(Value::as_array).map_or(0, Vec::len);
        for key in ["items", "additionalProperties"] {
            if let Some(sub) = s.get(key).filter(|v| v.is_object()) {
                n = n.max(self.enum_width(sub, seen));
            }
        }
        for sub in s
            .get("properties")
            .and_then(Value::as_object)
            .into_iter()
            .flat_map(Map::values)
        {
            n = n.max(self.enum_width(sub, seen));
        }
        n
    }

    fn sample(&self, schema: &Value, fill: Fill, variant: usize, depth: usize) -> Value {
        let s = self.resolve(schema);
        if fill == Fill::Nulls && depth > 0 && s.get("nullable") == Some(&Value::Bool(true)) {
            return Value::Null;
        }
        if let Some(e) = s
            .get("enum")
            .and_then(Value::as_array)
            .filter(|a| !a.is_empty())
        {
            return e[variant % e.len()].clone();
        }
        if let Some(all) = s.get("allOf").and_then(Value::as_array) {
            let mut merged = Map::new();
            for sub in all {
                if let Value::Object(o) = self.sample(sub, fill, variant, depth) {
                    merged.extend(o);
                }
            }
            return Value::Object(merged);
        }
        if let Some(first) = s
            .get("oneOf")
            .or(s.get("anyOf"))
            .and_then(Value::as_array)
            .and_then(|a| a.first())
        {
            return self.sample(first, fill, variant, depth);
        }
        // A value inside `minimum`..`maximum`.
        let number = |default: f64| {
            let mut x = default;
            if let Some(lo) = s.get("minimum").and_then(Value::as_f64) {
                x = x.max(lo);
            }
            if let Some(hi) = s.get("maximum").and_then(Value::as_f64) {
                x = x.min(hi);
            }
            x
        };
        let t = s.get("type").and_then(Value::as_str).unwrap_or(
            if s.get("properties").is_some() || s.get("additionalProperties").is_some() {
                "object"
            } else {
                "string"
            },
        );
        match t {
            "integer" => json!(number(1.0) as i64),
            "number" => json!(number(1.5)),
            "boolean" => json!(variant.is_multiple_of(2)),
            "array" => {
                if depth > 6 {
                    return json!([]);
                }
                let item = s.get("items").cloned().unwrap_or(json!({"type": "string"}));
                json!([self.sample(&item, fill, variant, depth + 1)])
            }
            "object" => {
                let mut o = Map::new();
                let required: Vec<&str> = s
                    .get("required")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                for (name, sub) in s
                    .get("properties")
                    .and_then(Value::as_object)
                    .into_iter()
                    .flatten()
                {
                    let wanted =
                        required.contains(&name.as_str()) || (fill != Fill::Required && depth < 6);
                    if wanted {
                        o.insert(name.clone(), self.sample(sub, fill, variant, depth + 1));
                    }
                }
                if fill != Fill::Required
                    && depth < 6
                    && let Some(ap) = s.get("additionalProperties").filter(|v| v.is_object())
                {
                    o.insert(
                        "sample-key".into(),
                        self.sample(ap, fill, variant, depth + 1),
                    );
                }
                Value::Object(o)
            }
            _ => match s.get("format").and_then(Value::as_str) {
                Some("date-time") => json!("2026-08-21T10:00:00Z"),
                _ => json!(format!("sample-{variant}")),
            },
        }
    }
}

/// A parameter's raw text as a JSON instance of its schema.
fn param_instance(schema: &Value, param: &Value, raw: &str) -> Value {
    match schema.get("type").and_then(Value::as_str) {
        Some("array") => {
            // `style: form`, `explode: false` (what E2B uses): comma-separated.
            let explode = param
                .get("explode")
                .and_then(Value::as_bool)
                .unwrap_or(true);
            let items: Vec<&str> = if explode {
                vec![raw]
            } else {
                raw.split(',').collect()
            };
            Value::Array(
                items
                    .into_iter()
                    .map(|i| Value::String(i.to_string()))
                    .collect(),
            )
        }
        Some("integer") | Some("number") => {
            serde_json::from_str(raw).unwrap_or(Value::String(raw.to_string()))
        }
        Some("boolean") => match raw {
            "true" => json!(true),
            "false" => json!(false),
            _ => Value::String(raw.to_string()),
        },
        _ => Value::String(raw.to_string()),
    }
}

fn check_format(format: &str, v: &Value) -> Result<(), String> {
    match format {
        "int32" => match v.as_i64() {
            Some(n) if i32::try_from(n).is_ok() => Ok(()),
            _ => Err(format!("{v} is not an int32")),
        },
        "int64" => match v.as_i64() {
            Some(_) => Ok(()),
            None => Err(format!("{v} is not an int64")),
        },
        "date-time" => {
            let s = v.as_str().unwrap_or_default();
            let b = s.as_bytes();
            let ok = b.len() >= 20
                && b[4] == b'-'
                && b[7] == b'-'
                && (b[10] == b'T' || b[10] == b't')
                && b[13] == b':'
                && b[16] == b':'
                && (s.ends_with('Z') || s.ends_with('z') || s[19..].contains(['+', '-']));
            if ok {
                Ok(())
            } else {
                Err(format!("{s:?} is not an RFC 3339 date-time"))
            }
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nullable_ref_and_ranges_are_checked() {
        let spec = OpenApi::e2b();
        let new_sandbox = json!({"$ref": "#/components/schemas/NewSandbox"});
        assert!(
            spec.validate(&new_sandbox, &json!({"templateID": "base", "timeout": 300}))
                .is_empty()
        );
        let e = spec.validate(&new_sandbox, &json!({"timeout": -1, "secure": "yes"}));
        assert_eq!(e.len(), 3, "{e:?}");
        let e = spec.validate(
            &new_sandbox,
            &json!({"templateID": "b", "timeout": 4_000_000_000u64}),
        );
        assert!(e.iter().any(|e| e.contains("int32")), "{e:?}");
        let sandbox = json!({"$ref": "#/components/schemas/Sandbox"});
        let ok = json!({"templateID":"t","sandboxID":"i","clientID":"c","envdVersion":"1","domain":null});
        assert!(spec.validate(&sandbox, &ok).is_empty());
        let bad = json!({"templateID":"t","sandboxID":"i","clientID":"c","envdVersion":null});
        assert_eq!(spec.validate(&sandbox, &bad).len(), 1);
    }

    #[test]
    fn operations_match_templates_preferring_literals() {
        let spec = OpenApi::e2b();
        assert_eq!(
            spec.operation("GET", "/sandboxes/metrics")
                .unwrap()
                .template,
            "/sandboxes/metrics"
        );
        assert_eq!(
            spec.operation("GET", "/sandboxes/i123").unwrap().template,
            "/sandboxes/{sandboxID}"
        );
        assert!(spec.operation("PATCH", "/sandboxes/i123").is_none());
    }

    #[test]
    fn samples_are_valid_against_their_schemas() {
        let spec = OpenApi::e2b();
        for name in [
            "Sandbox",
            "SandboxDetail",
            "ListedSandbox",
            "Error",
            "NewSandbox",
        ] {
            let schema = json!({"$ref": format!("#/components/schemas/{name}")});
            let samples = spec.samples(&schema);
            assert!(samples.len() >= 2, "{name}");
            for s in samples {
                assert_eq!(
                    spec.validate(&schema, &s),
                    Vec::<String>::new(),
                    "{name}: {s}"
                );
            }
        }
    }
}
