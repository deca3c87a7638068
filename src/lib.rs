//! revsnn
