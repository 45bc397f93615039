"""Tests of controlplane.jobs (a package so that modules can share helpers with conftest)."""
