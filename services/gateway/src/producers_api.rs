//! `POST /v1/producers/{tenant}/{producer_id}/epoch`: a producer starting up takes a new
//! epoch, which fences off every publish of its older epochs (as Kafka's idempotent producer
//! does with its producer epoch). Its sequence restarts at 1.
//!
//! Taking an epoch fences the producer's running instance, so it needs publish rights and
//! ownership of the producer id (the token's `producers` claim, see `auth::claims`).

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use serde::Serialize;

use agentwire_protocol::{ErrorCode, ProducerId, Tenant};

use crate::auth::Principal;
use crate::error::ApiError;
use crate::state::AppState;

#[derive(Debug, Serialize)]
pub struct EpochBody {
    tenant: Tenant,
    producer_id: ProducerId,
    epoch: u64,
    /// The first `producerseq` of the new epoch.
    next_seq: u64,
}

pub async fn new_epoch(
    State(state): State<AppState>,
    principal: Principal,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<EpochBody>, ApiError> {
    let Path((tenant, producer)) =
        path.map_err(|e| ApiError::new(ErrorCode::InvalidField, e.body_text()))?;
    let tenant = Tenant::new(tenant)?;
    let producer_id = ProducerId::new(producer)?;
    principal.check_epoch(&tenant, &producer_id)?;
    let epoch = state.idempotency().new_epoch(&tenant, &producer_id).await?;
    Ok(Json(EpochBody {
        tenant,
        producer_id,
        epoch,
        next_seq: 1,
    }))
}
