import numpy as np
import pytest

from afm_ray.elements import ELEMENT_TABLE
from afm_ray.errors import InputError


def test_table_covers_required_elements():
    required = list(range(1, 84)) + [90, 92]  # H–Bi, Th, U: every element ppafm parameterises
    for z in required:
        assert ELEMENT_TABLE.symbols[z], z
    r_half, eps = ELEMENT_TABLE.lj_params(required)
    assert (r_half > 0.5).all() and (eps > 0).all()
    assert (ELEMENT_TABLE.vdw_radius(required) > 1.0).all()
    assert (ELEMENT_TABLE.covalent_radius(required) > 0.2).all()
    for symbol in ("H", "C", "N", "O", "F", "Si", "P", "S", "Cl", "Br", "Rb", "Sn", "Te", "Cs", "Bi"):
        assert ELEMENT_TABLE.symbols[ELEMENT_TABLE.number(symbol)] == symbol


def test_known_values_from_cited_sources():
    # Bondi 1964 vdW radii, Cordero 2008 covalent radii, OPLS C/H as tabulated for the PPM.
    assert ELEMENT_TABLE.vdw_radius([1, 6, 17]).tolist() == [1.20, 1.70, 1.75]
    assert ELEMENT_TABLE.covalent_radius([6]).tolist() == [0.76]
    # Heavier rows: Bondi's Sn, Alvarez's Cs (Bondi lists none), Cordero's Sn and Cs.
    assert ELEMENT_TABLE.vdw_radius([50, 55]).tolist() == [2.17, 3.48]
    assert ELEMENT_TABLE.covalent_radius([50, 55]).tolist() == [1.39, 2.44]
    r_half, eps = ELEMENT_TABLE.lj_params(np.array([6, 1]))
    np.testing.assert_allclose(r_half, [1.908, 1.487])
    np.testing.assert_allclose(eps, [0.003729, 0.000681])


def test_unknown_elements_raise_clear_errors():
    with pytest.raises(InputError, match="unknown element Z=94"):
        ELEMENT_TABLE.check_numbers([6, 94])
    with pytest.raises(InputError, match=r"mol.xyz:3: unknown element symbol 'Qq'"):
        ELEMENT_TABLE.number("Qq", where="mol.xyz:3")
    with pytest.raises(InputError, match="Z=0"):
        ELEMENT_TABLE.lj_params([0])
