//! How sspctl prints what it lists: tables (comfy-table), `-o` field selection,
//! `-H`/`--no-headers` and JSON, in one place.
//!
//! A [`Listing`] is a set of rows, each a JSON object whose keys are the listing's fields. The
//! JSON output prints the objects (all fields, or those `-o` names); a table prints one column
//! per field (the listing's default columns, or those `-o` names) with a header row unless
//! `-H`. JSON units are uniform: a field named `size` or ending in `_bytes` is a byte count,
//! one ending in `_blocks` a count of pool blocks. Tables show byte fields in binary units
//! (`10GiB`); with `-H` (for scripts) they are exact byte counts, tab-separated.

use super::size::human_bytes;
use comfy_table::{CellAlignment, Table, TableStyle};
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::io::Write;
use thiserror::Error;

/// The output options every listing takes (global sspctl flags).
#[derive(Clone, Debug, Default)]
pub struct OutputOpts {
    pub json: bool,
    /// `-o a,b,c`: the fields to print, in this order.
    pub fields: Option<Vec<String>>,
    /// `-H`: no header row; columns separated by one tab; bytes exact.
    pub no_headers: bool,
}

impl OutputOpts {
    /// `-o` or `-H` given: print a table even where the plain output is a report.
    pub fn scripted(&self) -> bool {
        self.fields.is_some() || self.no_headers
    }
}

/// Errors of the output options.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum OutputError {
    #[error("unknown field {field:?} for {listing}; valid fields: {valid}")]
    UnknownField {
        field: String,
        listing: &'static str,
        valid: String,
    },
    #[error("-o needs at least one field name (valid fields for {listing}: {valid})")]
    NoFields {
        listing: &'static str,
        valid: String,
    },
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
}

/// One field of a listing.
#[derive(Clone, Debug)]
pub struct Field {
    /// The JSON key and `-o` name.
    pub name: Cow<'static, str>,
    /// Table header.
    pub header: Cow<'static, str>,
    /// Shown in the table when `-o` is not given.
    pub default: bool,
}

impl Field {
    pub const fn new(name: &'static str, header: &'static str, default: bool) -> Field {
        Field {
            name: Cow::Borrowed(name),
            header: Cow::Borrowed(header),
            default,
        }
    }

    fn is_bytes(&self) -> bool {
        self.name == "size" || self.name.ends_with("_bytes")
    }
}

/// Rows of one kind of thing, ready to print in any of the output forms.
pub struct Listing {
    /// What is listed, for error messages ("lu list").
    what: &'static str,
    fields: Vec<Field>,
    rows: Vec<Map<String, Value>>,
}

impl Listing {
    pub fn new(what: &'static str, fields: &[Field]) -> Listing {
        Listing {
            what,
            fields: fields.to_vec(),
            rows: Vec::new(),
        }
    }

    /// A listing whose fields are the keys of `obj` (a report such as `pool status`), every
    /// one of them shown by default, headers upper-cased.
    pub fn from_object(what: &'static str, obj: &Map<String, Value>) -> Listing {
        let fields = obj
            .keys()
            .map(|k| Field {
                name: Cow::Owned(k.clone()),
                header: Cow::Owned(k.to_ascii_uppercase()),
                default: true,
            })
            .collect();
        Listing {
            what,
            fields,
            rows: vec![obj.clone()],
        }
    }

    /// Add a row; keys not among the fields are dropped, missing fields are null.
    pub fn push(&mut self, row: Map<String, Value>) {
        self.rows.push(row);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    fn valid(&self) -> String {
        self.fields
            .iter()
            .map(|f| &*f.name)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The fields to print: those `-o` names, else (`all`) every field or the defaults.
    fn selected(&self, opts: &OutputOpts, all: bool) -> Result<Vec<Field>, OutputError> {
        let Some(names) = &opts.fields else {
            return Ok(self
                .fields
                .iter()
                .filter(|f| all || f.default)
                .cloned()
                .collect());
        };
        if names.is_empty() {
            return Err(OutputError::NoFields {
                listing: self.what,
                valid: self.valid(),
            });
        }
        names
            .iter()
            .map(|n| {
                self.fields
                    .iter()
                    .find(|f| f.name == n.as_str())
                    .cloned()
                    .ok_or_else(|| OutputError::UnknownField {
                        field: n.clone(),
                        listing: self.what,
                        valid: self.valid(),
                    })
            })
            .collect()
    }

    /// Check `-o` against the fields without printing (for outputs that print several parts).
    pub fn check(&self, opts: &OutputOpts) -> Result<(), OutputError> {
        self.selected(opts, true).map(|_| ())
    }

    fn object(row: &Map<String, Value>, fields: &[Field]) -> Value {
        Value::Object(
            fields
                .iter()
                .map(|f| {
                    (
                        f.name.to_string(),
                        row.get(&*f.name).cloned().unwrap_or(Value::Null),
                    )
                })
                .collect(),
        )
    }

    /// The rows as a JSON array of objects (all fields, or those `-o` names).
    pub fn json_rows(&self, opts: &OutputOpts) -> Result<Value, OutputError> {
        let fields = self.selected(opts, true)?;
        Ok(Value::Array(
            self.rows.iter().map(|r| Self::object(r, &fields)).collect(),
        ))
    }

    /// The first row as a JSON object (a report: `pool status`, `file stat`).
    pub fn json_object(&self, opts: &OutputOpts) -> Result<Value, OutputError> {
        let fields = self.selected(opts, true)?;
        Ok(self
            .rows
            .first()
            .map(|r| Self::object(r, &fields))
            .unwrap_or(Value::Object(Map::new())))
    }

    /// Print as JSON (an array) or as a table.
    pub fn print(&self, opts: &OutputOpts, out: &mut dyn Write) -> Result<(), OutputError> {
        if opts.json {
            writeln!(
                out,
                "{}",
                serde_json::to_string_pretty(&self.json_rows(opts)?)?
            )?;
            Ok(())
        } else {
            self.print_table(opts, out)
        }
    }

    /// Print a table: aligned columns sized to their longest cell (nothing is cut or wrapped,
    /// so long names never break a column), or with `-H` tab-separated values.
    pub fn print_table(&self, opts: &OutputOpts, out: &mut dyn Write) -> Result<(), OutputError> {
        let fields = self.selected(opts, false)?;
        if opts.no_headers {
            for r in &self.rows {
                let cells: Vec<String> = fields.iter().map(|f| text(f, r, true)).collect();
                writeln!(out, "{}", cells.join("\t"))?;
            }
            return Ok(());
        }
        let mut t = Table::new();
        t.load_style(TableStyle::new());
        t.set_header(fields.iter().map(|f| &*f.header).collect::<Vec<_>>());
        for r in &self.rows {
            t.add_row(fields.iter().map(|f| text(f, r, false)).collect::<Vec<_>>());
        }
        for (i, f) in fields.iter().enumerate() {
            if let Some(c) = t.column_mut(i) {
                // Columns two spaces apart, none before the first.
                c.set_padding((0, 2));
                if self
                    .rows
                    .iter()
                    .any(|r| r.get(&*f.name).is_some_and(Value::is_number))
                {
                    c.set_cell_alignment(CellAlignment::Right);
                }
            }
        }
        for line in t.lines() {
            writeln!(out, "{}", line.trim_end())?;
        }
        Ok(())
    }
}

/// A cell as text: byte counts in binary units (exact with `raw`), lists comma-separated,
/// empty values as `-` (so columns stay splittable on white space).
fn text(f: &Field, row: &Map<String, Value>, raw: bool) -> String {
    let v = row.get(&*f.name).unwrap_or(&Value::Null);
    match v {
        Value::Number(n) if f.is_bytes() && !raw => match n.as_u64() {
            Some(b) => human_bytes(b),
            None => n.to_string(),
        },
        Value::Number(n) => n.to_string(),
        Value::String(s) if s.is_empty() => "-".into(),
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Null => "-".into(),
        Value::Array(a) if a.is_empty() => "-".into(),
        Value::Array(a) if a.iter().all(Value::is_string) => a
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(","),
        other => other.to_string(),
    }
}

/// A row from any serializable struct (its JSON object; anything else is an empty row).
pub fn row_of(v: &impl serde::Serialize) -> Map<String, Value> {
    match serde_json::to_value(v) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    }
}

/// The JSON shape of an error under `--json`: `{"error": "..."}`.
pub fn json_error(msg: &str) -> String {
    serde_json::json!({ "error": msg }).to_string()
}

/// Parse `-o a,b,c` (names trimmed, lowercase).
pub fn fields_arg(s: &str) -> Result<Vec<String>, String> {
    Ok(s.split(',')
        .map(|f| f.trim().to_ascii_lowercase())
        .filter(|f| !f.is_empty())
        .collect())
}

/// Fields of volume rows (LUs, clones, snapshots, client images): one shape in every listing
/// and reply that shows volumes. `parent` is what a clone was made from (kept after that
/// snapshot or image is removed), a snapshot's LU or image.
pub const LU_FIELDS: &[Field] = &[
    Field::new("name", "NAME", true),
    Field::new("kind", "KIND", false),
    Field::new("size", "SIZE", true),
    Field::new("used_bytes", "USED", false),
    Field::new("unused_bytes", "UNUSED", true),
    Field::new("mapped_blocks", "MAPPED_BLOCKS", false),
    Field::new("owned_blocks", "OWNED_BLOCKS", false),
    Field::new("udid", "UDID", true),
    Field::new("provision", "PROVISION_TYPE", true),
    Field::new("reserved_bytes", "RESERVED", false),
    Field::new("parent", "CLONE_OF", true),
    Field::new("maps", "MAPPED_TO", true),
    Field::new("id", "ID", false),
];

/// The same fields for snapshots and client images (their parent is not a clone origin).
pub const SNAPSHOT_FIELDS: &[Field] = &[
    Field::new("name", "NAME", true),
    Field::new("kind", "KIND", false),
    Field::new("size", "SIZE", true),
    Field::new("used_bytes", "USED", true),
    Field::new("unused_bytes", "UNUSED", true),
    Field::new("mapped_blocks", "MAPPED_BLOCKS", false),
    Field::new("owned_blocks", "OWNED_BLOCKS", false),
    Field::new("udid", "UDID", true),
    Field::new("provision", "PROVISION_TYPE", false),
    Field::new("reserved_bytes", "RESERVED", false),
    Field::new("parent", "PARENT", true),
    Field::new("maps", "MAPPED_TO", false),
    Field::new("id", "ID", false),
];

/// A volume as a row: sizes in bytes.
pub fn volume_row(l: &crate::pool::LuInfo) -> Map<String, Value> {
    let used = l.mapped_blocks.saturating_mul(crate::format::BLOCK_U64);
    let v = serde_json::json!({
        "name": l.name,
        "kind": l.kind,
        "size": l.size,
        "used_bytes": used,
        "unused_bytes": l.size.saturating_sub(used),
        "mapped_blocks": l.mapped_blocks,
        "owned_blocks": l.owned_blocks,
        "udid": l.udid,
        "provision": l.provision,
        "reserved_bytes": l.reserved_bytes,
        "parent": l.parent,
        "maps": l.maps,
        "id": l.id,
    });
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// Volumes as a listing.
pub fn volumes(what: &'static str, fields: &[Field], lus: &[crate::pool::LuInfo]) -> Listing {
    let mut l = Listing::new(what, fields);
    for v in lus {
        l.push(volume_row(v));
    }
    l
}

/// Volumes as the JSON array every reply that returns volumes prints (all fields).
pub fn volumes_json(lus: &[crate::pool::LuInfo]) -> Value {
    Value::Array(lus.iter().map(|l| Value::Object(volume_row(l))).collect())
}

/// `pv list`.
pub const PV_FIELDS: &[Field] = &[
    Field::new("pool", "POOL", true),
    Field::new("failure_group", "FAILGRP", true),
    Field::new("name", "PV_NAME", true),
    Field::new("size", "SIZE", true),
    Field::new("state", "STATE", true),
    Field::new("udid", "UDID", true),
    Field::new("reason", "REASON", false),
];

/// The PV table of `pool status` (its `pvs`).
pub const STATUS_PV_FIELDS: &[Field] = &[
    Field::new("index", "PV", true),
    Field::new("failure_group", "FAILGRP", true),
    Field::new("name", "PATH", true),
    Field::new("size", "SIZE", true),
    Field::new("segments", "SEGMENTS", false),
    Field::new("udid", "UDID", true),
];

/// `failgrp list` (its `failure_groups`).
pub const FAILGRP_FIELDS: &[Field] = &[
    Field::new("name", "FAILGRP", true),
    Field::new("id", "ID", false),
    Field::new("size_bytes", "SIZE", true),
    Field::new("state", "STATE", true),
    Field::new("pvs", "PVS", true),
];

/// `file layout` (its `extents`): byte offsets, block counts, placement as JSON.
pub const LAYOUT_FIELDS: &[Field] = &[
    Field::new("start", "START", true),
    Field::new("end", "END", true),
    Field::new("state", "STATE", true),
    Field::new("owned_blocks", "OWNED_BLOCKS", true),
    Field::new("shared_blocks", "SHARED_BLOCKS", true),
    Field::new("placement", "PLACEMENT", false),
];

/// `diff` (its `extents`): byte offset and length of each changed extent.
pub const DIFF_FIELDS: &[Field] = &[
    Field::new("offset", "OFFSET", true),
    Field::new("length", "LENGTH", true),
];

/// Rows from serializable items.
pub fn listing_of<T: serde::Serialize>(
    what: &'static str,
    fields: &[Field],
    items: &[T],
) -> Listing {
    let mut l = Listing::new(what, fields);
    for i in items {
        l.push(row_of(i));
    }
    l
}

/// A report (one object: `pool status`, `file stat`, `scrub status`): JSON (`-o` selects
/// keys), or with `-o`/`-H` a one-row table; `None` when the caller prints its own report.
pub fn report(
    what: &'static str,
    v: &impl serde::Serialize,
    opts: &OutputOpts,
    out: &mut dyn Write,
) -> Result<Option<()>, OutputError> {
    if !opts.json && !opts.scripted() {
        return Ok(None);
    }
    let l = Listing::from_object(what, &row_of(v));
    if opts.json {
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&l.json_object(opts)?)?
        )?;
    } else {
        l.print_table(opts, out)?;
    }
    Ok(Some(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIELDS: &[Field] = &[
        Field::new("name", "NAME", true),
        Field::new("size", "SIZE", true),
        Field::new("udid", "UDID", false),
        Field::new("maps", "MAPPED_TO", true),
    ];

    fn listing() -> Listing {
        let mut l = Listing::new("test list", FIELDS);
        for (n, s, m) in [
            ("a", 10u64 << 30, vec![]),
            (
                "a-very-long-name-that-is-longer-than-any-column-was",
                512,
                vec!["uid:0", "10.0.0.0/8"],
            ),
        ] {
            l.push(row_of(
                &serde_json::json!({ "name": n, "size": s, "udid": "ff", "maps": m }),
            ));
        }
        l
    }

    fn render(opts: &OutputOpts) -> Result<String, OutputError> {
        let mut v = Vec::new();
        listing().print(opts, &mut v)?;
        Ok(String::from_utf8(v).unwrap())
    }

    #[test]
    fn table_defaults_and_alignment() {
        let s = render(&OutputOpts::default()).unwrap();
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(lines.len(), 3, "{s}");
        assert!(lines[0].starts_with("NAME"));
        assert!(!s.contains("UDID"));
        // Every column starts at the same offset on every line.
        let col = lines[0].find("SIZE").unwrap();
        assert_eq!(
            lines[0].find("MAPPED_TO").unwrap(),
            lines[1].find('-').unwrap()
        );
        assert!(lines[2].find("512B").unwrap() + 4 <= lines[0].find("MAPPED_TO").unwrap());
        assert!(col > "a-very-long-name-that-is-longer-than-any-column-was".len());
        assert!(lines[1].contains("10GiB"));
        assert!(lines[2].ends_with("uid:0,10.0.0.0/8"));
    }

    #[test]
    fn selected_fields_no_headers() {
        let s = render(&OutputOpts {
            fields: Some(vec!["udid".into(), "size".into(), "name".into()]),
            no_headers: true,
            ..OutputOpts::default()
        })
        .unwrap();
        assert_eq!(
            s,
            "ff\t10737418240\ta\nff\t512\ta-very-long-name-that-is-longer-than-any-column-was\n"
        );
    }

    #[test]
    fn json_selection_and_errors() {
        let opts = OutputOpts {
            json: true,
            fields: Some(vec!["name".into()]),
            ..OutputOpts::default()
        };
        let v: Value = serde_json::from_str(&render(&opts).unwrap()).unwrap();
        assert_eq!(v[0], serde_json::json!({ "name": "a" }));
        let e = render(&OutputOpts {
            fields: Some(vec!["bogus".into()]),
            ..OutputOpts::default()
        })
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("\"bogus\"") && e.contains("name, size, udid, maps"),
            "{e}"
        );
        assert_eq!(json_error("x \"y\""), r#"{"error":"x \"y\""}"#);
        assert_eq!(fields_arg(" Name, size,,").unwrap(), vec!["name", "size"]);
    }
}
