//! Metrics: one stat per name shared by all VMs of an Envoy, as in Envoy. As in Envoy, every
//! `proxy_define_metric` call hands out a new id of the calling VM (also for a name defined before),
//! so a filter that defines its metrics again on each reconfiguration grows the VM's id table, and
//! ids mean nothing in another VM. A negative increment of a counter and get_metric on a histogram
//! are BadArgument (docs/envoy-facts.md).

use wasmtime::{Caller, Linker, Result};

use super::Status;
use crate::memory;
use crate::state::{HostState, Metric, MetricKind};

pub fn add_to_linker(l: &mut Linker<HostState>) -> Result<()> {
    l.func_wrap(
        "env",
        "proxy_define_metric",
        |mut c: Caller<'_, HostState>, kind: i32, name: i32, name_len: i32, ret: i32| -> Result<i32> {
            let name = memory::read_string(&mut c, name, name_len)?;
            let kind = match kind {
                0 => MetricKind::Counter,
                1 => MetricKind::Gauge,
                2 => MetricKind::Histogram,
                _ => return Ok(Status::BadArgument as i32),
            };
            let stat = {
                let world = c.data().world.clone();
                let mut metrics = world.metrics.borrow_mut();
                match metrics.iter().position(|m| m.name == name) {
                    Some(i) => i,
                    None => {
                        metrics.push(Metric { name, kind, value: 0, samples: Vec::new() });
                        metrics.len() - 1
                    }
                }
            };
            let ids = &mut c.data_mut().metric_ids;
            ids.push(stat);
            let id = ids.len() - 1;
            memory::write_u32(&mut c, ret, id as u32)?;
            Ok(Status::Ok as i32)
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_increment_metric",
        |mut c: Caller<'_, HostState>, id: i32, offset: i64| -> Result<i32> {
            let Some(stat) = c.data().stat(id) else { return Ok(Status::NotFound as i32) };
            let counter = {
                let mut metrics = c.data().world.metrics.borrow_mut();
                let Some(m) = metrics.get_mut(stat) else { return Ok(Status::NotFound as i32) };
                match m.kind {
                    MetricKind::Counter if offset < 0 => return Ok(Status::BadArgument as i32),
                    MetricKind::Histogram => return Ok(Status::BadArgument as i32),
                    kind => {
                        m.value = m.value.saturating_add_signed(offset);
                        kind == MetricKind::Counter
                    }
                }
            };
            if counter && let Some(stream) = c.data_mut().stream() {
                stream.counted.push((stat as u32, offset as u64));
            }
            Ok(Status::Ok as i32)
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_record_metric",
        |c: Caller<'_, HostState>, id: i32, value: i64| -> Result<i32> {
            let Some(stat) = c.data().stat(id) else { return Ok(Status::NotFound as i32) };
            let mut metrics = c.data().world.metrics.borrow_mut();
            let Some(m) = metrics.get_mut(stat) else { return Ok(Status::NotFound as i32) };
            match m.kind {
                MetricKind::Histogram => m.samples.push(value as u64),
                _ => m.value = value as u64,
            }
            Ok(Status::Ok as i32)
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_get_metric",
        |mut c: Caller<'_, HostState>, id: i32, ret: i32| -> Result<i32> {
            let stat = c.data().stat(id);
            let found = stat.and_then(|i| c.data().world.metrics.borrow().get(i).map(|m| (m.kind, m.value)));
            match found {
                Some((MetricKind::Histogram, _)) => Ok(Status::BadArgument as i32),
                Some((_, v)) => {
                    memory::write_u64(&mut c, ret, v)?;
                    Ok(Status::Ok as i32)
                }
                None => Ok(Status::NotFound as i32),
            }
        },
    )?;
    Ok(())
}
