"""The operator's console: pages served at ``/console`` (plain ES modules and CSS from
this package, no build step), the API routes only it needs, and the audit log of
what operators did."""
