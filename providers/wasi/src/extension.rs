//! Host interfaces beyond WASI, linked into every component the provider runs: how a device
//! provider (the peripherals crate, or a vendor's) gives guests typed access to exactly what
//! their container was granted, without the WASI provider knowing the devices.
//!
//! An extension adds its interfaces to the component linker once per compiler tier, and
//! builds a fresh state for each instance from its container's grant. Its host functions
//! reach that state, and the instance's resource table, through
//! [`P2Host::extension`]. An instance whose container was granted nothing still links (the
//! component imports resolve) but gets the extension's state for an empty grant.

use std::any::Any;
use std::collections::BTreeMap;
use std::sync::Arc;

use kubelet::PodKey;
use wasmtime::component::{Linker, ResourceTable};

use crate::guest::P2Host;

/// What one container was granted, as an extension sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// The pod.
    pub pod: PodKey,
    /// The container's name.
    pub container: String,
    /// Its extended resources (devices), by name, in whole units.
    pub devices: BTreeMap<String, u64>,
}

/// Host interfaces linked into components beside WASI.
pub trait HostExtension: Send + Sync + 'static {
    /// Adds the interfaces to a component linker; called once per compiler tier, when the
    /// provider is built.
    fn add_to_linker(&self, linker: &mut Linker<P2Host>) -> wasmtime::Result<()>;

    /// The state one instance's calls work on, for its container's grant. Called for every
    /// instance (every request, for a served component), so keep it cheap.
    fn instance_state(&self, grant: &Grant) -> Box<dyn Any + Send>;
}

/// The extensions and one container's grant: makes each instance's extension states.
#[derive(Clone)]
pub(crate) struct InstanceExtensions {
    extensions: Arc<[Arc<dyn HostExtension>]>,
    grant: Arc<Grant>,
}

impl InstanceExtensions {
    pub(crate) fn new(extensions: Arc<[Arc<dyn HostExtension>]>, grant: Grant) -> Self {
        Self {
            extensions,
            grant: Arc::new(grant),
        }
    }

    /// Fresh states for one instance, one per extension.
    pub(crate) fn states(&self) -> Vec<Box<dyn Any + Send>> {
        self.extensions
            .iter()
            .map(|extension| extension.instance_state(&self.grant))
            .collect()
    }
}

/// One extension's view of an instance: its state, and the instance's resource table for
/// the handles (resources) its interfaces hand out.
pub struct ExtensionView<'a, T> {
    /// The instance's resource table, shared with WASI and bounded the same way.
    pub table: &'a mut ResourceTable,
    /// The extension's state for this instance; `None` if the extension is not linked into
    /// this provider (a host function then refuses every call).
    pub state: Option<&'a mut T>,
}

impl P2Host {
    /// The view of extension state `T` for this instance: what an extension's host
    /// functions are given by the getter passed to its `add_to_linker`.
    pub fn extension<T: Any>(&mut self) -> ExtensionView<'_, T> {
        let state = self
            .extensions
            .iter_mut()
            .find_map(|state| state.downcast_mut::<T>());
        ExtensionView {
            table: &mut self.table,
            state,
        }
    }
}
