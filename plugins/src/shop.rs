//! `pricing` and `checkout`: a service between plugins. `pricing` provides the service
//! `pricing` (a price list with a configurable discount); `checkout` requires it and calls it
//! through the host, one call per line of an order, inside its own `execute`. Both log each
//! call with `tracing`, so one order can be followed across the two processes by the trace id
//! the runtime puts on their log lines.

use plugvisor_proto::{json, Plugin, PluginError, Value};
use plugvisor_worker::{typed_config, Settings};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The price list, in cents.
const PRICES: [(&str, u64); 4] = [("apple", 40), ("bread", 250), ("cheese", 620), ("tea", 390)];

/// The service `checkout` calls.
pub const SERVICE: &str = "pricing";

/// Provides the `pricing` service: `{"sku": S, "qty": N}` → the line's price.
#[derive(Debug, Default)]
pub struct Pricing {
    settings: Settings<PricingConfig>,
}

/// `pricing`'s configuration.
#[derive(Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct PricingConfig {
    /// Taken off every unit price, in percent.
    #[schemars(range(max = 100))]
    pub discount_percent: u64,
}

impl Plugin for Pricing {
    fn name(&self) -> &str {
        "pricing"
    }

    fn version(&self) -> &str {
        env!("CARGO_PKG_VERSION")
    }

    typed_config!(settings; without initialize);

    async fn initialize(&self, config: Option<Value>) -> Result<(), PluginError> {
        let at_most_100 = |c: &PricingConfig| match c.discount_percent {
            0..=100 => Ok(()),
            _ => Err(PluginError::invalid_config("discount_percent: at most 100")),
        };
        self.settings.apply_checked(config, at_most_100).map(drop)
    }

    async fn execute(&self, input: Value) -> Result<Value, PluginError> {
        let sku = input
            .get("sku")
            .and_then(Value::as_str)
            .ok_or_else(|| PluginError::invalid_input("expected {\"sku\": …, \"qty\": …}"))?;
        let qty = input.get("qty").and_then(Value::as_u64).unwrap_or(1);
        let Some((_, unit)) = PRICES.iter().find(|(name, _)| *name == sku) else {
            let known: Vec<&str> = PRICES.iter().map(|(name, _)| *name).collect();
            return Err(PluginError::invalid_input(format!(
                "unknown sku {sku:?} (known: {})",
                known.join(", ")
            )));
        };
        let discount = self.settings.get().discount_percent;
        let unit_cents = unit * (100 - discount) / 100;
        tracing::info!(sku, qty, unit_cents, "pricing quoted a line");
        Ok(json!({
            "sku": sku,
            "qty": qty,
            "unit_cents": unit_cents,
            "total_cents": unit_cents.saturating_mul(qty),
        }))
    }
}

/// Prices an order through the `pricing` service: `{"items": [{"sku": S, "qty": N}, …]}` →
/// its lines and total.
#[derive(Debug, Default)]
pub struct Checkout;

impl Plugin for Checkout {
    fn name(&self) -> &str {
        "checkout"
    }

    fn version(&self) -> &str {
        env!("CARGO_PKG_VERSION")
    }

    async fn execute(&self, input: Value) -> Result<Value, PluginError> {
        let items = input
            .get("items")
            .and_then(Value::as_array)
            .ok_or_else(|| {
                PluginError::invalid_input("expected {\"items\": [{\"sku\", \"qty\"}]}")
            })?;
        let host = plugvisor_worker::host()?;
        let mut lines = Vec::with_capacity(items.len());
        let mut total = 0u64;
        for (i, item) in items.iter().enumerate() {
            let line = host
                .call(SERVICE, item.clone())
                .await
                .map_err(|e| line_error(i, e))?;
            total =
                total.saturating_add(line.get("total_cents").and_then(Value::as_u64).unwrap_or(0));
            lines.push(line);
        }
        tracing::info!(
            lines = lines.len(),
            total_cents = total,
            "checkout priced an order"
        );
        Ok(json!({ "lines": lines, "total_cents": total }))
    }
}

/// What `checkout` makes of a failed line: the customer's mistake stays one; anything else
/// means pricing cannot serve now.
fn line_error(i: usize, e: PluginError) -> PluginError {
    match e {
        PluginError::InvalidInput(m) => PluginError::InvalidInput(format!("item {i}: {m}")),
        other => PluginError::Unavailable(format!("pricing could not price item {i}: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn prices_apply_the_discount_and_refuse_unknown_skus() {
        let pricing = Pricing::default();
        pricing
            .initialize(Some(json!({"discount_percent": 50})))
            .await
            .unwrap();
        let line = pricing
            .execute(json!({"sku": "bread", "qty": 2}))
            .await
            .unwrap();
        assert_eq!(line["total_cents"], 250);
        let err = pricing.execute(json!({"sku": "caviar"})).await.unwrap_err();
        assert!(err.to_string().contains("caviar"), "{err}");
    }

    #[test]
    fn a_crashed_pricing_is_unavailable_to_the_customer_and_a_bad_item_is_their_mistake() {
        let bad = line_error(2, PluginError::InvalidInput("unknown sku".into()));
        assert!(matches!(bad, PluginError::InvalidInput(m) if m.starts_with("item 2")));
        let down = line_error(0, PluginError::Unavailable("gone".into()));
        assert!(matches!(down, PluginError::Unavailable(_)));
    }
}
