#!/bin/sh
# Stand-in for bubblewrap in the GIMP test chroot, which runs where no user namespaces can be made. GTK
# (through glycin) runs its image loaders in bwrap; here they run unsandboxed in the same environment.
# Only the options glycin passes are known; anything else is refused.
while [ $# -gt 0 ]; do
    case "$1" in
        --unshare-all | --die-with-parent | --clearenv | --new-session) shift ;;
        --chdir | --dev | --tmpfs | --seccomp | --proc | --dir) shift 2 ;;
        --ro-bind | --ro-bind-try | --bind | --bind-try | --dev-bind | --symlink | --setenv) shift 3 ;;
        --*) echo "bwrap stand-in: unknown option $1" >&2; exit 1 ;;
        *) break ;;
    esac
done
exec "$@"
