//! maas gateway: the data path in front of the inference backends.
//!
//! A pingora proxy ([`proxy`]) that routes Open Inference Protocol v2 requests ([`route`]),
//! authenticates API keys and JWTs ([`auth`], [`keys`], [`jwt`]; caches invalidated across
//! instances by [`invalidation`]), forwards to a backend pool ([`upstream`]) and
//! meters every request through a local spool ([`spool`]) into PostgreSQL with a background
//! writer ([`metering`]).
//! The operator API (tenants, keys) is [`admin`], axum on its own listener.
//! [`serve`] assembles the pingora server from a [`config::GatewayConfig`]; every client-facing
//! error and its status live in [`error`].

pub mod admin;
pub mod auth;
pub mod cache;
pub mod config;
pub mod error;
pub mod invalidation;
pub mod limits;
pub mod metering;
pub mod proxy;
pub mod serve;
mod store;
