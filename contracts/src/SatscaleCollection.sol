// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {ERC721} from "@openzeppelin/contracts/token/ERC721/ERC721.sol";
import {ERC721URIStorage} from "@openzeppelin/contracts/token/ERC721/extensions/ERC721URIStorage.sol";
import {ProvenanceRegistry} from "./ProvenanceRegistry.sol";

/// @title Satscale collection
/// @notice An ERC-721 collection whose tokens can be pointed at upscaled images. Every upgrade links the token to
/// the provenance record of the paid Satscale job that produced the image, so anyone can follow a token to its
/// input, output, model and payment.
/// @dev Token URIs live in ERC721URIStorage, which emits ERC-4906 MetadataUpdate on every write. The contract cannot
/// check that a URI's metadata really points at the record's output CID (the metadata lives off chain); it checks
/// that the record exists, and the link it stores lets a verifier do the rest.
contract SatscaleCollection is ERC721URIStorage, AccessControl {
    /// @notice Accounts allowed to mint new tokens.
    bytes32 public constant MINTER_ROLE = keccak256("MINTER_ROLE");
    /// @notice Accounts allowed to change a token's URI through {upgrade} and {upgradeBatch}.
    bytes32 public constant UPGRADER_ROLE = keccak256("UPGRADER_ROLE");

    /// @notice The registry whose records upgrades link to.
    ProvenanceRegistry public immutable provenanceRegistry;

    uint256 private _nextTokenId = 1;
    mapping(uint256 tokenId => bytes32 paymentHash) private _provenance;

    /// @notice Emitted for every token upgraded, next to ERC-4906's metadata events.
    event TokenUpgraded(uint256 indexed tokenId, bytes32 indexed paymentHash, string uri);

    /// @notice The registry has no record for this payment hash.
    error ProvenanceNotFound(bytes32 paymentHash);
    /// @notice The three arrays given to {upgradeBatch} differ in length.
    error BatchLengthMismatch(uint256 tokenIds, uint256 uris, uint256 paymentHashes);
    /// @notice {upgradeBatch} was called with no tokens.
    error EmptyBatch();
    /// @notice A token URI was empty.
    error EmptyURI();
    /// @notice The admin passed to the constructor was the zero address.
    error ZeroAdmin();
    /// @notice The registry passed to the constructor has no code.
    error InvalidRegistry(address registry);

    /// @param name_ ERC-721 name.
    /// @param symbol_ ERC-721 symbol.
    /// @param registry The ProvenanceRegistry that upgrades must link to.
    /// @param admin Account given DEFAULT_ADMIN_ROLE; it grants MINTER_ROLE and UPGRADER_ROLE.
    constructor(string memory name_, string memory symbol_, ProvenanceRegistry registry, address admin)
        ERC721(name_, symbol_)
    {
        if (admin == address(0)) revert ZeroAdmin();
        if (address(registry).code.length == 0) revert InvalidRegistry(address(registry));
        provenanceRegistry = registry;
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
    }

    /// @notice Mints the next token id (ids start at 1) to `to` with token URI `uri`. Only MINTER_ROLE.
    /// @dev Uses _safeMint, so a contract recipient must implement IERC721Receiver.
    /// @return tokenId The id of the new token.
    function mint(address to, string calldata uri) external onlyRole(MINTER_ROLE) returns (uint256 tokenId) {
        if (bytes(uri).length == 0) revert EmptyURI();
        tokenId = _nextTokenId++;
        _safeMint(to, tokenId);
        _setTokenURI(tokenId, uri);
    }

    /// @notice Points `tokenId` at `newURI` and links it to the provenance record of `paymentHash`. Only
    /// UPGRADER_ROLE. Emits ERC-4906 MetadataUpdate(tokenId) and {TokenUpgraded}.
    /// @param tokenId An existing token.
    /// @param newURI The token's new metadata URI (its image is the record's output).
    /// @param paymentHash The Lightning payment hash keying the record in {provenanceRegistry}; it must exist.
    function upgrade(uint256 tokenId, string calldata newURI, bytes32 paymentHash)
        external
        onlyRole(UPGRADER_ROLE)
    {
        _upgrade(tokenId, newURI, paymentHash);
    }

    /// @notice Upgrades several tokens at once, each as {upgrade} does. Only UPGRADER_ROLE.
    /// @dev Token ids may come in any order. When they form a contiguous ascending range (ids[i] == ids[0] + i)
    /// of more than one token, one ERC-4906 BatchMetadataUpdate(first, last) is emitted as well. ERC721URIStorage
    /// emits MetadataUpdate for every URI it stores, so each token also gets its own MetadataUpdate (and its
    /// {TokenUpgraded}) either way.
    /// @param tokenIds Existing tokens.
    /// @param uris New metadata URI per token.
    /// @param paymentHashes Provenance record per token.
    function upgradeBatch(uint256[] calldata tokenIds, string[] calldata uris, bytes32[] calldata paymentHashes)
        external
        onlyRole(UPGRADER_ROLE)
    {
        uint256 n = tokenIds.length;
        if (n == 0) revert EmptyBatch();
        if (uris.length != n || paymentHashes.length != n) {
            revert BatchLengthMismatch(n, uris.length, paymentHashes.length);
        }
        bool contiguous = true;
        uint256 first = tokenIds[0];
        for (uint256 i = 0; i < n; ++i) {
            // Compared as an offset from the first id, so an id near 2**256 cannot overflow first + i.
            if (contiguous && (tokenIds[i] < first || tokenIds[i] - first != i)) contiguous = false;
            _upgrade(tokenIds[i], uris[i], paymentHashes[i]);
        }
        if (contiguous && n > 1) emit BatchMetadataUpdate(first, tokenIds[n - 1]);
    }

    /// @notice The payment hash of the provenance record `tokenId` was last upgraded with; zero if never upgraded.
    function provenanceOf(uint256 tokenId) external view returns (bytes32) {
        _requireOwned(tokenId);
        return _provenance[tokenId];
    }

    /// @inheritdoc ERC721URIStorage
    /// @dev Reports ERC-721, ERC-721 Metadata, ERC-4906 (0x49064906), AccessControl and ERC-165.
    function supportsInterface(bytes4 interfaceId)
        public
        view
        override(ERC721URIStorage, AccessControl)
        returns (bool)
    {
        return super.supportsInterface(interfaceId);
    }

    function _upgrade(uint256 tokenId, string calldata newURI, bytes32 paymentHash) private {
        _requireOwned(tokenId);
        if (bytes(newURI).length == 0) revert EmptyURI();
        if (!provenanceRegistry.exists(paymentHash)) revert ProvenanceNotFound(paymentHash);
        _provenance[tokenId] = paymentHash;
        _setTokenURI(tokenId, newURI); // emits MetadataUpdate(tokenId)
        emit TokenUpgraded(tokenId, paymentHash, newURI);
    }
}
