# Sourced by scripts/deps.sh and scripts/debian13.sh: which Debian mirror this
# machine's apt already uses, so that what we add (a deb-src entry, a
# debootstrap) fetches from wherever this host is set up to fetch from.

# Prints the URI of the first `deb` entry whose suite is exactly $1, from
# deb822 .sources files first, then one-line sources.list files; nothing
# when there is none.
apt_mirror_for_suite() {
  local want="$1" f
  {
    for f in /etc/apt/sources.list.d/*.sources; do
      [ -r "$f" ] || continue
      awk -v want="$want" '
        function flush() {
          if (types ~ /(^| )deb( |$)/ && (" " suites " ") ~ (" " want " ") && uri != "")
            { print uri; found = 1; exit }
          types = ""; suites = ""; uri = ""
        }
        /^[[:space:]]*$/ { flush(); next }
        /^[[:space:]]*#/ { next }
        tolower($1) == "types:" { $1 = ""; types = $0 }
        tolower($1) == "suites:" { $1 = ""; suites = $0 }
        tolower($1) == "uris:" { uri = $2 }
        END { if (!found) flush() }' "$f"
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
      [ -r "$f" ] || continue
      # deb [options] URI SUITE COMPONENTS...
      sed -e 's/#.*//' -e 's/\[[^]]*\]//' "$f" |
        awk -v want="$want" '$1 == "deb" && $3 == want { print $2; exit }'
    done
  } | head -n1
}

# This machine's Debian codename (bookworm, trixie, ...), or nothing.
apt_host_codename() {
  sed -n 's/^VERSION_CODENAME=//p' /etc/os-release 2>/dev/null | tr -d '"'
}
