//! A client for the SPIRE Server Entry, Agent and Bundle APIs.
