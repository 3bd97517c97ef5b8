"The README's findings say exactly what figures/claims.json says."
import json
from pathlib import Path

from sfc_vision.claims import readme_findings, readme_findings_section

ROOT = Path(__file__).resolve().parent.parent


def test_readme_findings_match_claims():
    claims = json.loads((ROOT / "figures" / "claims.json").read_text())
    section = readme_findings_section((ROOT / "README.md").read_text())
    assert section == readme_findings(claims), (
        "README findings differ from figures/claims.json: run "
        "python -c \"from sfc_vision.claims import update_readme_findings as u; u('README.md', 'figures/claims.json')\"")
