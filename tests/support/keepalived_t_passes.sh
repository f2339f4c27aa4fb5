#!/bin/sh
# Fault injection for the rollback test: a keepalived whose config test (-t)
# always passes, standing in for a config that only fails at run time.
for arg in "$@"; do
    [ "$arg" = "-t" ] && exit 0
done
exec keepalived "$@"
