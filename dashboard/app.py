"""PrecisionOps dashboard: `streamlit run dashboard/app.py`. Reads and acts only through the REST API."""
from __future__ import annotations

import sys
from pathlib import Path

# `streamlit run` puts this file's folder on sys.path, not the repository root that holds `dashboard`.
_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import streamlit as st  # noqa: E402

from dashboard.session import sidebar_connection  # noqa: E402

# The page scripts live in views/, not pages/: streamlit treats a `pages/` folder beside the main script as a
# legacy multipage app and runs its files directly, without this script (no navigation, no sidebar, no key).
st.set_page_config(page_title="PrecisionOps", page_icon=":material/tune:", layout="wide")

navigation = st.navigation({
    "Rollouts": [
        st.Page("views/rollouts.py", title="Rollouts", icon=":material/rocket_launch:", default=True),  # at "/"
        st.Page("views/drift.py", title="Drift", icon=":material/monitoring:", url_path="drift"),
    ],
    "Engines": [
        st.Page("views/engines.py", title="Engines", icon=":material/memory:", url_path="engines"),
        st.Page("views/evaluations.py", title="Evaluations", icon=":material/fact_check:", url_path="evaluations"),
        st.Page("views/compatibility.py", title="Compatibility matrix", icon=":material/grid_on:",
                url_path="compatibility"),
    ],
    "Governance": [
        st.Page("views/audit.py", title="Audit log", icon=":material/history:", url_path="audit"),
    ],
})
sidebar_connection()
navigation.run()
