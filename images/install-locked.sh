#!/bin/sh
# Install a part of images/requirements.lock (the output of images/requirements.py --lock) into the image's venv
# through the wheelhouse /var/cache/wheels, a cache mount (the Makefile keeps podman's in
# $SLIMSERVE_CACHE/podman): a wheel already in it is checked against its hash and not downloaded again.
# Everything the part needs is listed, so nothing is resolved (--no-deps), and nothing comes unchecked.
#   install-locked.sh REQUIREMENTS [PIP PYTHON]    (default: the pip of /opt/pip, into /opt/slimserve)
# Without a pip in /opt/pip (a final image's stage, where /opt/pip is a tmpfs mount of the RUN, so that no image
# carries pip), the locked pip (pip.txt beside REQUIREMENTS) is installed there first.
set -eu
requirements=$1
pip=${2:-/opt/pip/bin/python}
python=${3:-/opt/slimserve/bin/python}
wheels=/var/cache/wheels
if [ ! -x "$pip" ]; then
  python -m venv /opt/pip
  "$0" "$(dirname "$requirements")/pip.txt" /opt/pip/bin/python /opt/pip/bin/python
fi
"$pip" -m pip --python "$python" download --quiet --require-hashes --no-deps --dest "$wheels" -r "$requirements"
"$pip" -m pip --python "$python" install --no-cache-dir --require-hashes --no-deps --no-index --find-links "$wheels" \
  -r "$requirements"
