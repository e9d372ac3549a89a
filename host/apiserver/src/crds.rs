//! Custom resources: the registry follows the stored CRDs, and a deleted CRD takes its
//! objects with it.

use serde_json::Value;
use skiff_core::registry::{Registry, collection_prefix};
use skiff_core::status::ApiError;
use skiff_store::{ListOptions, Preconditions};
use tracing::{info, warn};

use crate::ApiServer;
use crate::rest::{store_error, to_value};

const CRD_PREFIX: &str = "apiextensions.k8s.io/customresourcedefinitions/";

impl ApiServer {
    /// Rebuilds the registry from the stored CRDs, so a CRD's resources are served (or
    /// gone) as soon as its write returns.
    pub(crate) async fn refresh_custom_resources(&self) -> Result<(), ApiError> {
        let crds = self
            .store
            .list(ListOptions {
                prefix: CRD_PREFIX.into(),
                ..Default::default()
            })
            .await
            .map_err(store_error)?;
        let mut defs = Vec::new();
        for crd in &crds.items {
            let value = to_value(crd)?;
            if value.pointer("/metadata/deletionTimestamp").is_some() {
                continue;
            }
            defs.extend(skiff_core::crd::resource_defs(&value));
        }
        let registry = std::sync::Arc::new(Registry::with_custom(defs));
        *self.registry.write().unwrap_or_else(|p| p.into_inner()) = registry;
        Ok(())
    }

    /// Deletes every object of a deleted CRD's resource.
    pub(crate) async fn delete_custom_objects(&self, crd: &Value) {
        let Some(def) = skiff_core::crd::resource_defs(crd).into_iter().next() else {
            return;
        };
        let prefix = collection_prefix(&def, None);
        let mut deleted = 0;
        loop {
            let page = match self
                .store
                .list(ListOptions {
                    prefix: prefix.clone(),
                    limit: 500,
                    ..Default::default()
                })
                .await
            {
                Ok(p) => p,
                Err(err) => {
                    warn!(error = &err as &dyn std::error::Error, crd.resource = %def.qualified(), "cannot list custom objects to delete");
                    return;
                }
            };
            if page.items.is_empty() {
                break;
            }
            for item in page.items {
                match self
                    .store
                    .delete(item.key.clone(), Preconditions::default())
                    .await
                {
                    Ok(_) | Err(skiff_store::Error::NotFound { .. }) => deleted += 1,
                    Err(err) => {
                        warn!(error = &err as &dyn std::error::Error, object.key = %item.key, "cannot delete custom object");
                        return;
                    }
                }
            }
        }
        info!(crd.resource = %def.qualified(), objects = deleted, "deleted the objects of a removed CRD");
    }
}
